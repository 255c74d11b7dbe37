# LLMOps Studio on a CUDA machine: docker build -t llmops-studio . && \
#   docker run --gpus all -p 7860:7860 -v studio-home:/workspace llmops-studio
# Not built in this project's CI (no Docker engine there); keep it plain.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    STUDIO_HOME=/workspace STUDIO_HOST=0.0.0.0 STUDIO_PORT=7860 HF_HOME=/workspace/hf-cache
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY studio ./studio
COPY assets ./assets
COPY presets ./presets
COPY app.py ./
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install "torch==2.13.0" && /opt/venv/bin/pip install -e .
ENV PATH=/opt/venv/bin:$PATH

VOLUME /workspace
EXPOSE 7860
CMD ["python", "app.py"]
