#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# meson install script: installs the annotated configuration unless one is there already, so that
# reinstalling or upgrading never overwrites an operator's /etc/witlinkd/witlinkd.conf.
import os
import shutil
import sys

src, confdir = sys.argv[1:]
destdir = os.environ.get('DESTDIR', '')
if destdir:
    confdir = os.path.join(destdir, confdir.lstrip('/'))
dst = os.path.join(confdir, os.path.basename(src))
os.makedirs(confdir, mode=0o755, exist_ok=True)
if os.path.exists(dst):
    print(f'Keeping the existing {dst} (the annotated defaults are in {src})')
else:
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    print(f'Installing {src} to {dst}')
