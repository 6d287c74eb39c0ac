"""The image stages: build from Debian, fetch Raspberry Pi OS, prepare, check the boot partition, finalize."""
