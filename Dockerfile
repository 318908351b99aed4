# ferrolb: one image with both binaries (ferrolb-controller, ferrolb-speaker).
# The build step is the command CI runs (.ci/run, "release build"), so a green
# CI means this stage builds.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferrolb-controller -p ferrolb-speaker

# Small runtime: glibc and CA certificates only, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ferrolb-controller /usr/local/bin/ferrolb-controller
COPY --from=build /src/target/release/ferrolb-speaker /usr/local/bin/ferrolb-speaker
# The controller runs as this user; the speaker's DaemonSet runs as root with
# every capability dropped but NET_RAW.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferrolb-controller"]
