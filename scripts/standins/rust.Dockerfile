# Stand-in for rust:1.95-bookworm: Debian's C toolchain plus the host's Rust
# toolchain (bin/ and lib/ only), and the host's added CA certificates so
# cargo can reach crates.io through a TLS-intercepting proxy.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY toolchain/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH \
    CARGO_HOME=/usr/local/cargo
RUN mkdir -p /usr/local/cargo && rustc --version && cargo --version
