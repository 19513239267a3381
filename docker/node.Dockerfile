# A flopnet node (worker, validator or publisher) on CPU. For GPU nodes, start from a CUDA
# PyTorch image instead and install with the `gpu` extra.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libgmp-dev bubblewrap \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/flopnet
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY proof proof
COPY verifiers verifiers
COPY ledger ledger
COPY node node
COPY tui tui
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .
RUN useradd --create-home flopnet
USER flopnet
VOLUME /home/flopnet/.flopnet
EXPOSE 4001
ENTRYPOINT ["flopnet"]
CMD ["--help"]
