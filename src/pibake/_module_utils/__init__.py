"""The collection's plugins/module_utils inside pibake: isa.py and boards.py here are symlinks to those files.

One implementation serves both sides: Ansible ships plugins/module_utils with the
wheel_isa_check module (as ansible_collections.pibake.raspberry.plugins.module_utils), and the
harness imports the very same files as pibake._module_utils. Hatchling copies a symlink's target
into the wheel, and an editable install resolves it in place. Import pibake.isa and pibake.boards
rather than this package: they add the harness's error kinds.
"""
