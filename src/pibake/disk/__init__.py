"""Disk images as plain files: the MBR and partition layout, ext4 through debugfs, FAT through mtools, resize, fsck. No loop devices."""
