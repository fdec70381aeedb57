# chatd, chatctl and chat in a small Debian image. Build: `docker build -t chatd .` (the first
# build compiles RocksDB from source: ~11 minutes on 2 cores). Run the embedded default:
# `docker run -p 7400:7400 -v chatd-data:/var/lib/chatd chatd`; a 3-node cluster:
# deploy/compose.yaml. See docs/operations.md, "Packaging".

FROM rust:1-bookworm AS build
# What scripts/deps installs for a build: a C++ compiler for RocksDB, libclang for bindgen.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p chatd -p chat-client \
 && install -m 0755 target/release/chatd target/release/chatctl target/release/chat /usr/local/bin/

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/chatd --shell /usr/sbin/nologin chatd \
 && mkdir -p /var/lib/chatd && chown chatd:chatd /var/lib/chatd
COPY --from=build /usr/local/bin/chatd /usr/local/bin/chatctl /usr/local/bin/chat /usr/local/bin/
USER chatd
WORKDIR /var/lib/chatd
# Every flag is also a CHATD_* variable (docs/operations.md); these make the image's default a
# single node with its data on the volume, reachable from outside the container. Plaintext off
# loopback needs CHATD_INSECURE: the image's default trusts the container network it is
# published on; in production mount certificates and set CHATD_TLS_CA, CHATD_TLS_CERT,
# CHATD_TLS_KEY and CHATD_PUBLIC_LISTEN instead (docs/operations.md, "TLS and the two addresses").
ENV CHATD_DATA_DIR=/var/lib/chatd \
    CHATD_LISTEN=0.0.0.0:7400 \
    CHATD_INSECURE=true \
    CHATD_METRICS_LISTEN=0.0.0.0:9100
VOLUME /var/lib/chatd
EXPOSE 7400 9100
# SIGTERM is a planned stop: leaderships handed over, device streams ended, exit within ~8 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chatd"]
