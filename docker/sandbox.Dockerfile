# The code-verifier sandbox image, as verifiers/sandbox/docker_runner.py expects it: interpreters
# and compilers only (python3, node, g++, rustc), prlimit (util-linux), sh and head (coreutils),
# and the unprivileged user 10001. The runner starts every program in a new container with no
# network, a read-only root, all capabilities dropped, no-new-privileges, a size-capped /tmp
# tmpfs, memory, pids and CPU limits, the job's files in a volume at /box, and prlimit inside for
# CPU time and file size. The runner builds it when missing; by hand:
#   docker build -t flopnet-sandbox:1 -f docker/sandbox.Dockerfile docker
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ nodejs rustc util-linux coreutils \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 sandbox
USER 10001
WORKDIR /tmp
