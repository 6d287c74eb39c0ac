"""Disk images as plain files: MBR and layout, ext4 (debugfs), FAT (mtools), resize, fsck; no loop devices."""
