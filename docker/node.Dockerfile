# A flopnet node (worker, validator, publisher or relay), built with no network:
#
#   scripts/images.sh            # base image + wheelhouse + this image (see that script)
#   docker build --network none --build-arg BASE_IMAGE=flopnet/base:bookworm \
#       -f docker/node.Dockerfile -t flopnet/node:cpu .
#
# BASE_IMAGE must have Python 3.11 with venv (the wheelhouse's wheels are cp311) and tini; the
# default is the local Debian base scripts/images.sh makes with debootstrap. On a GPU host, give
# a CUDA base with Python 3.11 and build the wheelhouse with the `gpu` extra (vLLM):
# docs/deploy.md shows it; it is not built on the project's machines (no registry, no GPU).
#
# Packages come only from the wheelhouse in .images/wheels (pip install --no-index).
ARG BASE_IMAGE=flopnet/base:bookworm

FROM ${BASE_IMAGE} AS deps
LABEL org.flopnet.stage=build
# The dependencies (torch, transformers, libp2p, ...) in a virtual environment: this stage and
# its copy below are reused from the build cache until the dependency wheelhouse changes.
COPY .images/wheels/deps /wheels/deps
RUN python3 -m venv /opt/flopnet \
    && /opt/flopnet/bin/pip install --no-index --no-cache-dir --find-links /wheels/deps \
        /wheels/deps/*.whl

FROM ${BASE_IMAGE}
LABEL org.flopnet.image=node
# uid 10000, not the sandbox image's 10001: the kernel counts processes per uid across
# containers. /data: identity, ledger, inbox, logs (--data-dir /data);
# FLOPNET_HOME: the node's home, where converted model weights are cached.
RUN groupadd --gid 10000 flopnet \
    && useradd --uid 10000 --gid 10000 --home-dir /home/flopnet --create-home \
        --shell /usr/sbin/nologin flopnet \
    && mkdir -p /data /home/flopnet/.flopnet \
    && chown flopnet:flopnet /data /home/flopnet/.flopnet \
    && chmod 0700 /data
COPY --from=deps /opt/flopnet /opt/flopnet
# flopnet itself (a small wheel, rebuilt with every change of the code): the layers above stay
# cached while only the code changes.
COPY .images/wheels/flopnet /tmp/wheels
RUN /opt/flopnet/bin/pip install --no-index --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/flopnet/bin/flopnet --help >/dev/null
COPY docker/devnet-init.sh /opt/flopnet/devnet-init.sh
# Hugging Face's and vLLM's caches go into the model-cache volume too (downloaded weights).
ENV PATH=/opt/flopnet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    FLOPNET_HOME=/home/flopnet/.flopnet \
    HF_HOME=/home/flopnet/.flopnet/huggingface \
    VLLM_CACHE_ROOT=/home/flopnet/.flopnet/vllm \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10000:10000
WORKDIR /home/flopnet
VOLUME ["/data", "/home/flopnet/.flopnet"]
# libp2p's TCP port (choose it with --port); the local API stays on 127.0.0.1.
EXPOSE 4001
# tini runs as PID 1 and hands SIGTERM to the daemon, which stops cleanly: everything it
# acknowledged is already durable (docker stop: give it a grace period, e.g. -t 60).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=10s --start-period=300s --retries=3 \
    CMD ["flopnet", "status", "--data-dir", "/data", "--timeout", "8"]
ENTRYPOINT ["/usr/bin/tini", "--", "flopnet"]
CMD ["--help"]
