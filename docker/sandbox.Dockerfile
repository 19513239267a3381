# The code verifier's sandbox image (verifiers/sandbox/docker_runner.py): interpreters and
# compilers only (python3, node, g++, rustc), prlimit (util-linux), sh and head (coreutils), an
# unprivileged user 10001 and /box owned by it. Built with no network on the local base that
# scripts/images.sh makes with debootstrap (it already holds the tools):
#   docker build --network none --build-arg BASE_IMAGE=flopnet/sandbox-base:bookworm \
#       -t flopnet-sandbox:1 -f docker/sandbox.Dockerfile docker
# On a stock base (debian:bookworm-slim) the tools are installed from Debian here instead, and
# that build needs the network.
#
# The runner starts every program in a new container of this image: no network, read-only root,
# every capability dropped, no-new-privileges, size-capped /tmp and /dev/shm, memory (swap
# included), pids and CPU limits, the job's files in a volume at /box (read-only except for
# compilers), prlimit inside for CPU time, address space and file size.
ARG BASE_IMAGE=flopnet/sandbox-base:bookworm
FROM ${BASE_IMAGE}
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN missing=""; \
    for tool in python3 node g++ rustc prlimit head; do \
        command -v "$tool" >/dev/null || missing="$missing $tool"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 nodejs g++ rustc util-linux; \
        rm -rf /var/lib/apt/lists/*; \
    fi
# No set-uid programs (no-new-privileges makes them inert anyway), and the sandbox user owns
# /box: a new volume mounted there starts with that owner, so compilers need no root either.
RUN find / -xdev -type f -perm /6000 -exec chmod a-s {} + ; \
    groupadd --gid 10001 sandbox; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin sandbox; \
    mkdir -p /box; \
    chown 10001:10001 /box
USER 10001:10001
WORKDIR /tmp
