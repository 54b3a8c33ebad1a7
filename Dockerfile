# ratel in a container: a Rust builder stage, then a small Debian runtime running as a
# non-root user with its state on the /var/lib/ratel volume.
#
#   docker build -t ratel .
#   docker run -d --name ratel -p 1812:1812/udp -p 1813:1813/udp -p 1237:1237 \
#     -v ratel-data:/var/lib/ratel -v $PWD/ratel.toml:/etc/ratel/ratel.toml:ro ratel
#
# The image's /etc/ratel/ratel.toml (packaging/ratel.toml) listens on all interfaces with
# the demo admin password, so `serve` refuses to start until you mount a config with your
# own password, NAS list and rate decks (see README, "Operating ratel").

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ratel \
 && strip target/release/ratel

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/ratel \
        --shell /usr/sbin/nologin ratel \
 && install -d -o ratel -g ratel -m 0700 /var/lib/ratel \
 && install -d -m 0755 /etc/ratel
COPY --from=build /src/target/release/ratel /usr/local/bin/ratel
COPY packaging/ratel.toml /etc/ratel/ratel.toml
COPY fixtures/demo/rates /etc/ratel/rates
USER ratel
WORKDIR /var/lib/ratel
VOLUME /var/lib/ratel
# 1812/udp RADIUS authorization, 1813/udp accounting, 1237/tcp JSON-RPC.
EXPOSE 1812/udp 1813/udp 1237
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ratel"]
CMD ["serve", "--config", "/etc/ratel/ratel.toml"]
