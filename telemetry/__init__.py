"""What operators watch: Prometheus metrics, OpenTelemetry traces and GPU telemetry. The lowest layer: every
other package may import it, it imports none of them."""
