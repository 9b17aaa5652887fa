-- pg-load schema v1: a mirror of the answering step's output (answers/ and rejected/ CSVs) plus provenance.
-- Applied once, inside the load transaction, after the advisory lock is taken (see pg_load/migrate.py).

CREATE TABLE qa_sources (
    source_file   text PRIMARY KEY,            -- the input CSV's path relative to the answering input
    sha256        text NOT NULL,               -- digest of answers/<source_file> + rejected/<source_file>
    answer_rows   integer NOT NULL,
    rejected_rows integer NOT NULL,
    pach_job_id   text,                        -- $PACH_JOB_ID of the loading job, when run by Pachyderm
    input_commit  text,                        -- $<input>_COMMIT: the answering output commit that was loaded
    loaded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE qa_answers (
    source_file  text NOT NULL,
    row_number   integer NOT NULL,             -- 1-based data row in the input CSV
    id           text NOT NULL,
    question     text NOT NULL,
    context      text NOT NULL,
    answer       text NOT NULL,
    score        double precision NOT NULL,
    answer_start integer NOT NULL,             -- context[answer_start:answer_end] == answer (characters)
    answer_end   integer NOT NULL,
    model        text NOT NULL,
    extra        jsonb CHECK (jsonb_typeof(extra) = 'object'),  -- the input's other columns; NULL if left empty
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_file, row_number)
);

CREATE TABLE qa_rejected (
    source_file text NOT NULL,
    row_number  integer NOT NULL,              -- 0: the whole file could not be read
    error       text NOT NULL,
    raw         text NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_file, row_number)
);

-- Answers with where they came from.
CREATE VIEW qa_answers_with_provenance AS
SELECT a.source_file,
       a.row_number,
       a.id,
       a.question,
       a.context,
       a.answer,
       a.score,
       a.answer_start,
       a.answer_end,
       a.model,
       a.extra,
       a.loaded_at,
       s.sha256        AS source_sha256,
       s.pach_job_id,
       s.input_commit,
       s.loaded_at     AS source_loaded_at
FROM qa_answers a
JOIN qa_sources s USING (source_file);
