# streamwatch: one image for the simulator, detector and dashboard services.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamwatch ./streamwatch
COPY simulators ./simulators
COPY dashboards ./dashboards
# CPU build of torch (the default index serves a multi-GB CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install '.[confluent]'
RUN useradd --create-home streamwatch && mkdir -p /var/lib/streamwatch \
 && chown streamwatch /var/lib/streamwatch
USER streamwatch
ENTRYPOINT ["streamwatch"]
CMD ["--help"]
