"""The emulated Pi: QEMU machine profiles and command lines, boot inputs, guests, SSH, the Ansible inventory."""
