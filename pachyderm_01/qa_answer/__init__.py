"""Image 1: ingest question CSVs and answer them with an extractive-QA model.

Keep this file free of imports: image 2 imports ``qa_answer.contract`` without torch installed.
"""
