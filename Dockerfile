# usher in a container: build with the Rust toolchain, run from a distroless image holding
# only the binary, CA certificates (distroless ships them) and a default config.
#   docker build -t usher .
#   docker run -p 80:80 -p 443:443 -v usher-certs:/var/lib/usher/certs usher
# Docker lets containers bind ports below 1024 without root (ip_unprivileged_port_start=0),
# so usher runs as the image's non-root user. SIGTERM (docker stop) drains gracefully; logs
# go to stdout.

FROM rust:1-bookworm AS build
WORKDIR /src
# the manifest first, so dependency builds stay cached while only the source changes
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/usher /out/usher \
    && install -d -m 0700 -o 65532 -g 65532 /out/certs

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usher /usr/local/bin/usher
COPY deploy/docker/proxy.toml /etc/usher/proxy.toml
COPY --chown=65532:65532 public /srv/www
# certificates (local CA, ACME account keys and certificates) outlive the container; the
# folder belongs to the user usher runs as, and a new named volume takes that over
COPY --from=build --chown=65532:65532 /out/certs /var/lib/usher/certs
VOLUME ["/var/lib/usher/certs"]
# the image's "nonroot" user, by number so the host can tell it is not root
USER 65532:65532
EXPOSE 80 443
ENTRYPOINT ["/usr/local/bin/usher"]
CMD ["run", "--config", "/etc/usher/proxy.toml"]
