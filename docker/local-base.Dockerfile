# A stand-in for python:3.*-slim-bookworm where Docker Hub is out of reach (used by docker/build-images).
# ROOTFS is Debian bookworm from mmdebstrap (python3, python3-venv, ca-certificates, passwd); this layer adds
# what the Dockerfiles expect of the official image: `python` on PATH, a UTF-8 locale, and this machine's CA
# bundle, so that pip inside a build trusts the TLS proxy in front of PyPI. Bookworm's Python is 3.11.
ARG ROOTFS=localhost/debian-python-rootfs:bookworm
FROM ${ROOTFS}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/python3 /usr/local/bin/python3
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
