"""The image stages: build from Debian, fetch Raspberry Pi OS, prepare for emulation, check the boot partition, finalize."""
