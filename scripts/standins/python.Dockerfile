# Stand-in for a Python tool image (moto, aws-cli) from Debian's Python and
# one PyPI package; the host's CA certificates let pip through a
# TLS-intercepting proxy. ARG PACKAGE is the pip requirement, ENTRY the
# command the real image runs.
FROM debian:bookworm-slim
ARG PACKAGE
ARG ENTRY
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates \
    && python3 -m venv /opt/tool \
    && /opt/tool/bin/pip install --quiet --cert /etc/ssl/certs/ca-certificates.crt "$PACKAGE" \
    && ln -s "/opt/tool/bin/$ENTRY" /usr/local/bin/entry \
    && ln -s "/opt/tool/bin/$ENTRY" "/usr/local/bin/$ENTRY"
ENTRYPOINT ["/usr/local/bin/entry"]
