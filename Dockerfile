# The image the KubeRay RayJob (k8s/rayjob.yaml) runs: Ray's own GPU image, on the Ray and
# Python versions pyproject.toml pins, with this project installed. On this base pip takes
# the CUDA build of torch==2.13.0, which is what GPU nodes need.
#   docker build -t <registry>/p2med:<tag> . && docker push <registry>/p2med:<tag>
FROM rayproject/ray:2.60.0-py311-gpu
COPY --chown=ray:users . /home/ray/p2med
RUN pip install --no-cache-dir /home/ray/p2med
WORKDIR /home/ray/p2med
