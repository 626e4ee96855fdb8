# SPDX-License-Identifier: LGPL-2.1-only
"""crit's side of criusec: what crit (crit/crit/__main__.py) does with an
encrypted checkpoint, so that crit itself only calls in here.

opts is crit's dictionary of parsed options (tls_key, trust, sign_key,
sign_cert, in, out, dir, pid, pages, what).
"""
import argparse
import os
import sys

import pycriu.images

from .checkpoint import Checkpoint
from .common import (CriusecError, EncryptedImageError, DEFAULT_KEY, TRUSTED_SIGNERS, PLAIN_BY_DESIGN,
                     replace_file)
from .policy import Policy
from .sign import Signer
from .stream import is_stream


def policy(opts):
    """The restore policy (--trust, /etc/criu/trusted-signers.pem, the
    encryption-required marker), loaded once."""
    if 'policy' not in opts:
        opts['policy'] = Policy(opts.get('trust'))
    return opts['policy']


def checkpoint(opts, path):
    """The checkpoint (plain or encrypted) of the image directory path."""
    return Checkpoint(path or '.', opts.get('tls_key'), policy=policy(opts))


def signer(opts):
    """The Signer of --sign-key and --sign-cert, or None."""
    key, cert = opts.get('sign_key'), opts.get('sign_cert')
    if not key and not cert:
        return None
    if not key or not cert:
        raise CriusecError("--sign-key and --sign-cert go together")
    return Signer.from_files(key, cert)


def open_input(opts):
    """-i PATH: an image of an encrypted checkpoint is decrypted (and
    checked) with the checkpoint's cipher.img, found beside it."""
    d, name = os.path.split(opts['in'])
    ck = checkpoint(opts, d)
    if ck.encrypted:
        opts['decrypted'] = True
        return ck.open(name)
    ck.check_plain(name)
    f = open(opts['in'], 'rb')
    if is_stream(f.peek(8)):
        f.close()
        return ck.open(name)  # refused: no cipher.img beside it
    return f


def check_stdin(opts, f):
    """Standard input is never an encrypted image (it has no cipher.img)."""
    if is_stream(f.peek(8)):
        raise EncryptedImageError("standard input: encrypted image; pass it with -i PATH (beside its cipher.img) "
                                  "and the key with --tls-key")
    policy(opts).check_plain("standard input")
    return f


def open_dir_image(opts, name):
    """An image of the checkpoint in opts['dir'], authenticated."""
    if 'ckpt' not in opts:
        opts['ckpt'] = checkpoint(opts, opts['dir'])
    return opts['ckpt'].open(name)


def write_decoded(opts, data):
    """Decrypted content goes to a new owner-only file, never through a
    file or link planted at its name: True when written so."""
    if not (opts['out'] and opts.get('decrypted')):
        return False
    replace_file(opts['out'], data)
    return True


def encode_into(opts, img):
    """Into an encrypted checkpoint (cipher.img beside the output), the
    image is encrypted with the checkpoint's own key, as criu wrote it, and
    the checkpoint sealed again: its manifest records the new image, and a
    new header is signed with --sign-key, or else unsigned (an edited
    checkpoint is no longer what its signer signed).  True when done so;
    False: crit writes the plain image itself."""
    if opts['out']:
        d, name = os.path.split(opts['out'])
        ck = checkpoint(opts, d)
        if ck.encrypted and name not in PLAIN_BY_DESIGN:
            sig = signer(opts)
            was_signed = ck.signed
            ck.write_image(name, pycriu.images.dumps(img))
            ck.reseal(sig)
            if was_signed and sig is None:
                print("crit: note: %s is unsigned now (edited; pass --sign-key and --sign-cert to sign it), "
                      "so a trust policy refuses it" % (d or '.'), file=sys.stderr)
            return True
    if opts.get('sign_key') or opts.get('sign_cert'):
        raise CriusecError("%s: --sign-key and --sign-cert go with -o into an encrypted checkpoint"
                           % (opts['out'] or 'standard output'))
    if not opts['out'] and opts.get('tls_key'):
        raise CriusecError("standard output: crit encode --tls-key writes an encrypted image "
                           "only with -o PATH, beside its checkpoint's cipher.img")
    return False


def describe(opts, path):
    """crit info DIR: a checkpoint's cipher.img header and what this reader makes of it."""
    return checkpoint(opts, path).describe()


def parse_range(s):
    """START-END or START+LENGTH, in hex (0x optional)."""
    try:
        if '+' in s:
            a, n = s.split('+', 1)
            a = int(a, 16)
            return a, a + int(n, 16)
        a, b = s.split('-', 1)
        return int(a, 16), int(b, 16)
    except ValueError:
        raise argparse.ArgumentTypeError("%r: give START-END or START+LENGTH, in hex" % s)


def show_pages(opts, pid, start, end):
    """A hex dump of the dumped pages of pid in [start, end)."""
    ck = opts.get('ckpt') or checkpoint(opts, opts['dir'])
    name = 'pagemap-%d.img' % pid
    if not os.path.exists(ck.path(name)):
        print("\t(no pages: %s is not in the checkpoint)" % name)
        return
    last = None
    for vaddr, page in ck.pages(name, start, end):
        if last is not None and vaddr != last:
            print("\t%-18s" % '*')
        lo, hi = max(vaddr, start), min(vaddr + len(page), end)
        for a in range(lo - lo % 16, hi, 16):
            row = page[a - vaddr:a - vaddr + 16]
            print("\t%016x  %-48s |%s|" % (a, ' '.join('%02x' % c for c in row),
                                          ''.join(chr(c) if 32 <= c < 127 else '.' for c in row)))
        last = vaddr + len(page)


def explore_task(opts, pid):
    """crit x DIR mems --pid/--pages: True when this task is done here (or skipped)."""
    if opts.get('pid') is not None and pid != opts['pid']:
        return True
    if opts.get('pages'):
        print("%d" % pid)
        show_pages(opts, pid, *opts['pages'])
        return True
    return False


def explore_begin(opts):
    """As criu restore does: every image of an encrypted checkpoint is
    authenticated before any is used, so a damaged one stops crit before
    it prints anything."""
    if (opts.get('pages') or opts.get('pid') is not None) and opts['what'] != 'mems':
        raise CriusecError("--pages and --pid go with 'crit x DIR mems'")
    opts['ckpt'] = checkpoint(opts, opts['dir'])
    opts['ckpt'].verify()
    if opts['what'] == 'ps' and opts['ckpt'].encrypted:
        print('\n'.join(opts['ckpt'].summary()) + '\n')


def add_key_options(p):
    p.add_argument(
        '--tls-key',
        action='append',
        metavar='KEY',
        help='private key (PEM) of a recipient of an encrypted checkpoint; may be given more than once '
        '(default: %s when readable)' % DEFAULT_KEY)
    p.add_argument(
        '--trust',
        action='append',
        metavar='PEM',
        help='trusted signers (PEM: pinned certificates, CAs); may be given more than once '
        '(default: %s when it exists); then only signed checkpoints of trusted signers are read'
        % TRUSTED_SIGNERS)


def add_sign_options(p):
    p.add_argument('--sign-key',
                   metavar='KEY',
                   help='-o into an encrypted checkpoint: sign it again with this key (PEM)')
    p.add_argument('--sign-cert',
                   metavar='CERT',
                   help='-o into an encrypted checkpoint: the certificate chain (PEM) of --sign-key')


def add_explore_options(p):
    p.add_argument('--pages',
                   metavar='RANGE',
                   type=parse_range,
                   help='mems: hex dump of the dumped pages in START-END or START+LENGTH (hex)')
    p.add_argument('--pid', type=int, help='mems: only this task')


def run(func, opts):
    """crit's command, its criusec failures as one line naming the image and what is wrong, no traceback."""
    try:
        func(opts)
    except (CriusecError, pycriu.images.EncryptedImageException) as e:
        print("crit: %s" % e, file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print("crit: %s" % ("%s: %s" % (e.filename, e.strerror) if e.filename else e), file=sys.stderr)
        sys.exit(1)
