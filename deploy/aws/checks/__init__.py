"""Custom checkov checks for deploy/aws (loaded with `checkov --external-checks-dir`)."""
