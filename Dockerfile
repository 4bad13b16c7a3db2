# Worker image for cluster runs (Dataflow --sdk_container_image, Flink/Spark --environment_config):
# the Beam SDK harness plus simulforge and everything its stages need, pinned like `make setup`.
FROM apache/beam_python3.11_sdk:2.77.0

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng libespeak-ng1 ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/simulforge
COPY requirements.lock pyproject.toml README.md ./
# torch is pinned to its CPU build: the CPU wheel index keeps pip from pulling CUDA.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock
COPY simulforge simulforge
COPY pipeline pipeline
COPY transforms transforms
COPY models models
COPY training training
COPY eval eval
COPY configs configs
COPY settings settings
COPY demo demo
RUN pip install --no-cache-dir --no-deps .

ENV OMP_NUM_THREADS=1 LANG=C.UTF-8
# Smoke-test the image on a tiny demo corpus (every stage runs). This also compiles the
# aligner's numba kernels into the installed package's __pycache__, so workers load them
# instead of each compiling them (~3 CPU s).
RUN simulforge demo-data /tmp/smoke/demo --scale 0.1 \
 && simulforge curate --input /tmp/smoke/demo --output /tmp/smoke/out --work-dir /tmp/smoke/work \
 && rm -rf /tmp/smoke
# The SDK harness stays the entry point, as Beam expects of a custom container.
ENTRYPOINT ["/opt/apache/beam/boot"]
