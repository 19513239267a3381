# The code-verifier sandbox image: an interpreter and compilers, nothing else, run with no
# network, a read-only root and resource limits by the validator (see the verifiers issue).
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ nodejs \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 sandbox
USER sandbox
WORKDIR /work
