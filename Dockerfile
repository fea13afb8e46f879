# A CUDA image with autolabel installed, for Ray clusters (KubeRay, `ray up`, ...).
# Based on Ray's own GPU image of the Ray version the project uses, so head and workers match.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/autolabel
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users pipeline ./pipeline
COPY --chown=ray:users configs ./configs
# torch + torchvision together (CUDA wheels from PyPI), then the project with S3 support,
# installed as a wheel is (not editable): the presets and the shipped model come from the
# installed package, as on any node that pip-installs the wheel.
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" \
 && pip install --no-cache-dir ".[s3]"

# Smoke command: `docker run IMAGE` prints the CLI's help.
CMD ["autolabel", "--help"]
