# The switchyard binary without libtorch (api, scheduler, echo/dummy/openai-style workers).
# Torch workers need libtorch: build them on the host with scripts/setup.sh.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p switchyard --no-default-features

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
ENTRYPOINT ["switchyard"]
