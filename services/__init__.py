"""The service types the gateway hosts."""
