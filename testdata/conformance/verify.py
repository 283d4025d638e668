#!/usr/bin/env python3
"""A second verifier of prov provisioning bundles, written from
docs/image-format.md alone (not from the Go code), and its runner over the
conformance suite in this directory.

    python3 verify.py [SUITE_DIR]            run every case of cases.json
    python3 verify.py --json [SUITE_DIR]     the same, one JSON line per case

It exits 0 when every verdict, error name and step agrees with cases.json,
1 otherwise. It needs Python 3.9 or later and the `cryptography` package
(Debian: python3-cryptography; version 38, Debian 12's, is enough), nothing
else. It runs the pre-mount inspection (step 25, section 6: checks 1 to 48
in order but 41, a second reader's, and reports the check's name) and
compares /etc/prov/image.json with the statement (step 40).
"""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import struct
import sys
import zlib
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

# Section 3 of the specification: the name each step refuses with.
REASONS = {
    1: "truncated", 2: "malformed", 3: "malformed", 4: "truncated", 5: "malformed",
    6: "malformed", 7: "malformed", 8: "malformed", 9: "malformed",
    10: "untrusted signer", 11: "untrusted signer", 12: "untrusted signer", 13: "untrusted signer",
    14: "bad signature", 15: "malformed", 16: "unsupported format", 17: "malformed",
    18: "bad issue time", 19: "wrong device", 20: "rollback", 21: "too large", 22: "truncated",
    23: "too large", 24: "digest mismatch", 40: "metadata mismatch",
}
for _s in range(25, 40):
    REASONS[_s] = "bad image"

MAGIC = b"PROVBNDL"
MAX_STATEMENT = 65536
MAX_INTEGER = 2**53 - 1
MEDIA_TYPE = "prov-image+jws"


class Refused(Exception):
    def __init__(self, step, detail, check=None):
        super().__init__(f"{REASONS[step]} (step {step}): {detail}")
        self.step = step
        self.reason = REASONS[step]
        self.check = check  # the inspection's check, for step 25


def refuse(step, detail):
    raise Refused(step, detail)


# --- JSON (section 2, "JSON rules") ---------------------------------------

class _Number:
    """A JSON number as written: integer spelling or not."""

    def __init__(self, text, integer):
        self.text, self.integer = text, integer


def _pairs(pairs):
    out = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"member {name!r} appears twice")
        out[name] = value
    return out


def _constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_object(data, step):
    """The JSON rules: UTF-8, no backslash, one object, no duplicate member
    names at any depth (compared exactly), nothing after it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        refuse(step, "not UTF-8")
    if "\\" in text:
        refuse(step, "a backslash: escapes are not allowed")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=lambda s: _Number(s, True),
            parse_float=lambda s: _Number(s, False),
            parse_constant=_constant,
        )
    except (ValueError, RecursionError) as e:
        refuse(step, f"not JSON: {e}")
    if not isinstance(value, dict):
        refuse(step, "not a JSON object")
    return value


def json_type(v):
    if isinstance(v, str):
        return "string"
    if isinstance(v, _Number):
        return "number"
    if isinstance(v, bool):
        return "boolean"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "array"
    return "object"


def check_members(obj, want, step):
    """Exactly the members of want, each of its JSON type."""
    for name, value in obj.items():
        if name not in want:
            refuse(step, f"unknown member {name!r}")
        if json_type(value) != want[name]:
            refuse(step, f"member {name!r} is a {json_type(value)}")
    for name in want:
        if name not in obj:
            refuse(step, f"member {name!r} missing")


def integer(v):
    """A JSON integer spelt with digits only, 0 to 2^53-1; else None."""
    if not isinstance(v, _Number) or not v.integer or not re.fullmatch(r"[0-9]+", v.text):
        return None
    n = int(v.text)
    return n if n <= MAX_INTEGER else None


# --- base64 ---------------------------------------------------------------

def b64url_canonical(part):
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part) or len(part) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != part:
        return None
    return raw


def b64std_canonical(s):
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", s) or len(s) % 4 != 0:
        return None
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        return None
    if base64.b64encode(raw).decode() != s:
        return None
    return raw


# --- DER, just enough to read names as written ----------------------------

def der_tlv(b, i):
    """(tag, content start, end) of the TLV at b[i:]."""
    tag = b[i]
    n = b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def raw_names(cert):
    """The issuer and subject of a certificate as encoded in it."""
    tbs = cert.tbs_certificate_bytes
    _, i, _ = der_tlv(tbs, 0)  # TBSCertificate SEQUENCE
    fields = []
    while len(fields) < 6:
        tag, start, end = der_tlv(tbs, i)
        if not fields and tag == 0xA0:  # [0] version
            i = end
            continue
        fields.append(tbs[i:end])
        i = end
    # serialNumber, signature, issuer, validity, subject, ...
    return fields[2], fields[4]


def der(cert):
    return cert.public_bytes(Encoding.DER)


# --- certificates ---------------------------------------------------------

SIG_ALGS = {
    "1.3.101.112": ("ed25519", None),
    "1.2.840.10045.4.3.2": ("ecdsa", hashes.SHA256()),
    "1.2.840.10045.4.3.3": ("ecdsa", hashes.SHA384()),
    "1.2.840.10045.4.3.4": ("ecdsa", hashes.SHA512()),
    "1.2.840.113549.1.1.11": ("rsa", hashes.SHA256()),
    "1.2.840.113549.1.1.12": ("rsa", hashes.SHA384()),
    "1.2.840.113549.1.1.13": ("rsa", hashes.SHA512()),
}

OID_BC, OID_KU, OID_EKU, OID_SAN, OID_NC = "2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.17", "2.5.29.30"
KNOWN_CRITICAL = {OID_BC, OID_KU, OID_EKU, OID_SAN, OID_NC}
EKU_ANY, EKU_CODE_SIGNING = "2.5.29.37.0", "1.3.6.1.5.5.7.3.3"


def signed_by(child, parent):
    kind, h = SIG_ALGS.get(child.signature_algorithm_oid.dotted_string, (None, None))
    if kind is None:
        return f"signature algorithm {child.signature_algorithm_oid.dotted_string} not accepted"
    pub = parent.public_key()
    try:
        if kind == "ed25519" and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes)
        elif kind == "ecdsa" and isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(h))
        elif kind == "rsa" and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), h)
        else:
            return "the issuer's key does not fit the signature algorithm"
    except InvalidSignature:
        return "bad signature"
    return None


def ext(cert, oid):
    for e in cert.extensions:
        if e.oid.dotted_string == oid:
            return e
    return None


def not_before(c):
    return getattr(c, "not_valid_before_utc", None) or c.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def not_after(c):
    return getattr(c, "not_valid_after_utc", None) or c.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def domain_match(host, constraint):
    """A host name against a DNS-style constraint (URIs use the same): a
    leading '.' matches subdomains only, otherwise the name and its
    subdomains; case-insensitive; '' matches all."""
    host, constraint = host.lower(), constraint.lower()
    if constraint == "":
        return True
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint or host.endswith("." + constraint)


def check_name_constraints(ca, leaf):
    nc = ext(ca, OID_NC)
    if nc is None:
        return None
    san = ext(leaf, OID_SAN)
    names = list(san.value) if san else []
    for subtrees, permitted in ((nc.value.permitted_subtrees, True), (nc.value.excluded_subtrees, False)):
        if not subtrees:
            continue
        for t in subtrees:
            if nc.critical and not isinstance(t, (x509.DNSName, x509.UniformResourceIdentifier, x509.IPAddress, x509.RFC822Name)):
                return f"a critical name constraint of type {type(t).__name__}"
        for name in names:
            cons = [t for t in subtrees if type(t) is type(name)]
            if not cons:
                continue
            if isinstance(name, x509.UniformResourceIdentifier):
                host = urlsplit(name.value).hostname or ""
                if host == "":
                    return f"URI {name.value!r} has no host"
                hit = any(domain_match(host, c.value) for c in cons)
            elif isinstance(name, x509.DNSName):
                hit = any(domain_match(name.value, c.value) for c in cons)
            elif isinstance(name, x509.IPAddress):
                hit = any(name.value in c.value for c in cons)
            else:
                hit = any(name.value.lower() == c.value.lower() if "@" in c.value
                          else domain_match(name.value.rsplit("@", 1)[-1], c.value) for c in cons)
            if hit != permitted:
                return f"{name.value!r} is outside the name constraints of {ca.subject.rfc4514_string()!r}"
    return None


def trust_domain(root):
    san = ext(root, OID_SAN)
    uris = [n.value for n in san.value if isinstance(n, x509.UniformResourceIdentifier)] if san else []
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise SystemExit("the root names no trust domain")
    return uris[0][len("spiffe://"):]


LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"


def signer_rules(leaf, td):
    """Step 12: the signer certificate's own rules."""
    san = ext(leaf, OID_SAN)
    names = list(san.value) if san else []
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        return "its only subject alternative name must be one URI"
    uri = names[0].value
    m = re.fullmatch(r"spiffe://([^/]+)/signer/(" + LABEL + ")", uri)
    if not m or m.group(1) != td:
        return f"URI {uri!r} is not spiffe://{td}/signer/<name>"
    cns = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(cns) > 1:
        return "more than one CN"
    if cns and cns[0].value != "signer/" + m.group(2):
        return f"CN {cns[0].value!r} disagrees with {uri}"
    bc = ext(leaf, OID_BC)
    if bc is not None and bc.value.ca:
        return "the signer is a CA"
    eku = ext(leaf, OID_EKU)
    if eku is None or EKU_CODE_SIGNING not in [u.dotted_string for u in eku.value]:
        return "codeSigning is not in its extended key usage"
    ku = ext(leaf, OID_KU)
    if ku is not None and not ku.value.digital_signature:
        return "its key usage lacks digitalSignature"
    if not isinstance(leaf.public_key(), ed25519.Ed25519PublicKey):
        return "its key is not Ed25519"
    return None


# --- the pre-mount inspection (section 6, "Pre-mount inspection") --------

class Bad(Exception):
    """A refusal by one check of the inspection, named as section 6 does."""
    def __init__(self, check, detail):
        super().__init__(f"{check}: {detail}")
        self.check = check


MAX_IMAGE = 2097152
META = 8192
MAX_TABLE = 1 << 20
BLOCK = 131072
MAX_FILE = 65536
MAX_CONTENT = 1507328
NONE64 = 0xFFFFFFFFFFFFFFFF
FIXED = ["/etc/hostname", "/etc/machine-id", "/etc/serial-number", "/etc/mqtt-client-id",
         "/etc/mqtt-group-id", "/etc/prov/image.json", "/etc/extension-release.d/extension-release.prov"]
FIXED_DIRS = {"/etc", "/etc/prov", "/etc/extension-release.d"}
DATA_PREFIX = "/etc/prov/data"
COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")
MQTT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
MACHINE_ID = re.compile(r"[0-9a-f]{32}\Z")


def inflate(data, limit):
    """One zlib stream that ends exactly where data does, at most limit bytes."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise ValueError(f"zlib: {e}")
    if len(out) > limit or d.unconsumed_tail:
        raise ValueError(f"inflates to more than {limit} bytes")
    if not d.eof or d.unused_data:
        raise ValueError("the zlib stream does not end where the block does")
    return out


class Table:
    """A decoded metadata table: its bytes and where each block starts."""
    def __init__(self, data, starts, end):
        self.data, self.starts, self.end = data, starts, end

    def pos(self, block, offset, at_end=False):
        """The position of the reference (block, offset), or None."""
        if block in self.starts:
            i = self.starts.index(block)
            if offset < min(META, len(self.data) - i * META):
                return i * META + offset
            found = True
        else:
            i, found = sum(1 for s in self.starts if s < block), False
        p = i * META + offset
        if at_end and p == len(self.data) and (found or block == self.end):
            return p
        return None


def read_table(img, start, end, plain_only, check, limit, over):
    data, starts, pos = b"", [], start
    while pos < end:
        if starts and len(data) % META:
            raise Bad(check, f"the block before {pos} decodes to {len(data) % META} bytes, not 8 KiB")
        if pos + 2 > len(img):
            raise Bad(check, f"header at {pos} outside the image")
        (h,) = struct.unpack_from("<H", img, pos)
        n = h & 0x7FFF
        if n == 0 or n > META or pos + 2 + n > end:
            raise Bad(check, f"block at {pos} of {n} bytes")
        if not h & 0x8000 and plain_only:
            raise Bad(check, f"compressed block at {pos} in an uncompressed image")
        if len(data) + META > limit:
            raise Bad(over, f"more than {limit} bytes")
        starts.append(pos - start)
        raw = img[pos + 2:pos + 2 + n]
        if h & 0x8000:
            data += raw
        else:
            try:
                data += inflate(raw, META)
            except ValueError as e:
                raise Bad(check, f"block at {pos}: {e}")
        pos += 2 + n
    return Table(data, starts, end - start)


def fills(extents, start, end):
    at = start
    for s, e in sorted(extents):
        if s != at:
            return False
        at = e
    return at == end


def inspect_image(img, serial, generation):
    """Runs checks 1 to 48 of section 6 in order; raises Bad naming the
    first that fails."""
    if len(img) > MAX_IMAGE:
        raise Bad("image-size", f"{len(img)} bytes")
    if len(img) < 96:
        raise Bad("superblock-missing", f"{len(img)} bytes")
    (magic, inodes, mkfs_time, block_size, fragments, comp, block_log, flags, no_ids, major, minor,
     root_ref, used, id_table, xattr, inode_table, dir_table, frag_table, lookup) = \
        struct.unpack_from("<IIIIIHHHHHHQQQQQQQQ", img, 0)
    sb = [
        ("superblock-magic", magic == 0x73717368),
        ("superblock-version", (major, minor) == (4, 0)),
        ("superblock-compression", comp == 1),
        ("superblock-block-size", block_size == BLOCK and block_log == 17),
        ("superblock-flags", flags in (0x0A1B, 0x0210)),
        ("superblock-time", mkfs_time == 0),
        ("superblock-fragments", fragments == 0),
        ("superblock-ids", no_ids == 1),
        ("superblock-inodes", 1 <= inodes <= 1024),
        ("superblock-tables", xattr == NONE64 and lookup == NONE64
         and 96 <= inode_table < dir_table <= frag_table < id_table and id_table + 8 == used <= len(img)),
    ]
    for name, ok in sb:
        if not ok:
            raise Bad(name, "superblock field")
    plain = flags == 0x0A1B
    if len(img) != -(-used // 4096) * 4096 or any(img[used:]):
        raise Bad("image-length", f"{len(img)} bytes, {used} used")
    (index,) = struct.unpack_from("<Q", img, id_table)
    if index != frag_table:
        raise Bad("id-table", f"the index names {index}, the block is at {frag_table}")
    ids = read_table(img, frag_table, id_table, plain, "id-table", META, "id-table")
    if len(ids.starts) != 1 or len(ids.data) != 4:
        raise Bad("id-table", f"{len(ids.starts)} blocks of {len(ids.data)} bytes")
    if struct.unpack_from("<I", ids.data)[0] != 0:
        raise Bad("id-root", "the one id is not 0")
    itab = read_table(img, inode_table, dir_table, plain, "metadata-block", MAX_TABLE, "table-size")
    dtab = read_table(img, dir_table, frag_table, plain, "metadata-block", MAX_TABLE, "table-size")

    # Inodes, in table order (checks 18 to 29).
    t, off, by_pos, numbers, content, data, listings = itab.data, 0, {}, set(), 0, [], []
    for k in range(1, inodes + 1):
        if off + 32 > len(t):
            raise Bad("inode-table-end", f"the table ends inside inode {k} of {inodes}")
        typ, mode, uid, gid, mtime, num = struct.unpack_from("<HHHHII", t, off)
        if typ not in (1, 2):
            raise Bad("inode-type", f"inode {num} has type {typ}")
        if mode != (0o755 if typ == 1 else 0o644):
            raise Bad("inode-mode", f"inode {num} has mode {mode:04o}")
        if uid or gid:
            raise Bad("inode-owner", f"inode {num}")
        if mtime:
            raise Bad("inode-time", f"inode {num}")
        if not 1 <= num <= inodes or num in numbers:
            raise Bad("inode-number", f"inode number {num}")
        numbers.add(num)
        node = {"type": typ, "number": num, "reached": False}
        by_pos[off] = node
        if typ == 1:
            start, nlink, fsize, offset, parent = struct.unpack_from("<IIHHI", t, off + 16)
            off += 32
            if fsize < 3 or nlink < 2:
                raise Bad("directory-inode", f"directory {num}: size {fsize}, link count {nlink}")
            p = dtab.pos(start, offset, fsize == 3)
            if p is None or p + fsize - 3 > len(dtab.data):
                raise Bad("directory-inode", f"directory {num}: listing outside the directory table")
            node.update(listing=p, size=fsize - 3, nlink=nlink, parent=parent)
            if fsize > 3:
                listings.append((p, p + fsize - 3))
            continue
        start, frag, frag_off, fsize = struct.unpack_from("<IIII", t, off + 16)
        off += 32
        if frag != 0xFFFFFFFF or frag_off != 0:
            raise Bad("file-fragment", f"file {num}")
        if fsize > MAX_FILE:
            raise Bad("file-too-large", f"file {num}: {fsize} bytes")
        nblocks = -(-fsize // BLOCK)
        if off + 4 * nblocks > len(t):
            raise Bad("inode-table-end", f"the table ends inside the block list of inode {num}")
        words = struct.unpack_from(f"<{nblocks}I", t, off)
        off += 4 * nblocks
        end = start
        for w in words:
            n = w & ~0x1000000
            if n == 0 or n > BLOCK or w >> 25 or (plain and not w & 0x1000000):
                raise Bad("file-blocks", f"file {num}: size word {w:#x}")
            end += n
        if start < 96 or end > inode_table:
            raise Bad("file-blocks", f"file {num}: data at [{start}, {end})")
        content += fsize
        if content > MAX_CONTENT:
            raise Bad("content-size", f"more than {MAX_CONTENT} bytes")
        pos, out = start, b""
        for i, w in enumerate(words):
            want = BLOCK if i < nblocks - 1 else fsize - BLOCK * i
            n = w & ~0x1000000
            raw = img[pos:pos + n]
            if not w & 0x1000000:
                try:
                    raw = inflate(raw, BLOCK)
                except ValueError as e:
                    raise Bad("file-size", f"file {num} block {i}: {e}")
            if len(raw) != want:
                raise Bad("file-size", f"file {num} of size {fsize}: block {i} holds {len(raw)} bytes")
            out += raw
            pos += n
        node["data"] = out
        if end > start:
            data.append((start, end))
    if off != len(t):
        raise Bad("inode-table-end", f"{len(t) - off} bytes after the last inode")
    if not fills(data, 96, inode_table):
        raise Bad("data-layout", "the files' data do not fill the data area")

    # The tree (checks 31 to 40).
    p = itab.pos(root_ref >> 16, root_ref & 0xFFFF) if root_ref >> 48 == 0 else None
    root = by_pos.get(p)
    if root is None:
        raise Bad("root-inode", f"reference {root_ref:#x} names no inode")
    if root["type"] != 1 or root["number"] != inodes or root["parent"] != inodes + 1:
        raise Bad("root-inode", "not a directory numbered the inode count, parent the count + 1")
    root["reached"] = True
    entries = []  # (path, node), in walk order
    reached = [1]

    def walk(d, path):
        listing = dtab.data[d["listing"]:d["listing"] + d["size"]]
        prev, subdirs, o = None, 0, 0
        while o < len(listing):
            if o + 12 > len(listing):
                raise Bad("directory-listing", f"{path}: a header at {o}")
            count, block, base = struct.unpack_from("<III", listing, o)
            count += 1
            if count > 256:
                raise Bad("directory-listing", f"{path}: {count} entries in a header")
            o += 12
            for _ in range(count):
                if o + 8 > len(listing):
                    raise Bad("directory-listing", f"{path}: an entry at {o}")
                ioff, delta, typ, nlen = struct.unpack_from("<HhHH", listing, o)
                if o + 9 + nlen > len(listing):
                    raise Bad("directory-listing", f"{path}: an entry at {o}")
                name = listing[o + 8:o + 9 + nlen]
                o += 9 + nlen
                q = itab.pos(block, ioff)
                node = by_pos.get(q)
                if node is None or base + delta != node["number"]:
                    raise Bad("dirent-inode", f"{path}: {name!r}")
                if typ != node["type"]:
                    raise Bad("dirent-type", f"{path}: {name!r} has type {typ}, its inode {node['type']}")
                if len(name) > 255 or name in (b".", b"..") or b"/" in name or b"\0" in name or \
                        (prev is not None and name <= prev):
                    raise Bad("dirent-name", f"{path}: {name!r}")
                if node["reached"]:
                    raise Bad("link", f"{path}: {name!r} reached twice")
                prev = name
                node["reached"] = True
                reached[0] += 1
                child = path.rstrip("/") + "/" + name.decode("latin-1")
                entries.append((child, node))
                if node["type"] != 1:
                    continue
                subdirs += 1
                if node["parent"] != d["number"]:
                    raise Bad("parent", f"{child} names parent {node['parent']}")
                walk(node, child)
        if d["nlink"] != 2 + subdirs:
            raise Bad("link-count", f"{path}: link count {d['nlink']}, {subdirs} subdirectories")

    walk(root, "/")
    if reached[0] != inodes:
        raise Bad("unreachable", f"{reached[0]} of {inodes} inodes")
    if not fills(listings, 0, len(dtab.data)):
        raise Bad("directory-table-layout", "the listings do not fill the directory table")

    # The contract's tree and contents (checks 42 to 48; 41, a second
    # reader's disagreement, is ours to skip: this tree was read once).
    files, ndata, total = {}, 0, 0
    for path, node in entries:
        comps = path.strip("/").split("/")
        if node["type"] == 1:
            below = path == DATA_PREFIX or path.startswith(DATA_PREFIX + "/")
            if path not in FIXED_DIRS and not (below and len(comps) <= 8 and all(COMPONENT.match(c) for c in comps[3:])):
                raise Bad("entry-path", f"directory {path}")
            continue
        if path not in FIXED:
            if not path.startswith(DATA_PREFIX + "/") or len(path.encode("latin-1")) > 255 or len(comps) > 8 \
                    or not all(COMPONENT.match(c) for c in comps[3:]):
                raise Bad("entry-path", f"file {path}")
            ndata += 1
            total += len(node["data"])
            if ndata > 256 or total > 1 << 20:
                raise Bad("data-limits", f"{ndata} data files, {total} bytes")
        files[path] = node["data"]
    for f in FIXED:
        if f not in files and f != "/etc/machine-id":
            raise Bad("fixed-files", f"no {f}")
    if files["/etc/serial-number"] != serial.encode() + b"\n":
        raise Bad("serial-number", "not the statement's serial")
    try:
        md = json.loads(files["/etc/prov/image.json"].decode("utf-8"))
    except ValueError as e:
        raise Bad("metadata", f"image.json: {e}")
    if not isinstance(md, dict) or not set(md) <= {"format", "serial", "generation", "issuedAt"} or md.get("format") != 1 or md.get("serial") != serial or \
            type(md.get("generation")) is not int or md.get("generation") != generation:
        raise Bad("metadata", "image.json names another format, device or generation")
    if files["/etc/extension-release.d/extension-release.prov"] != b"ID=_any\nCONFEXT_SCOPE=system\n":
        raise Bad("extension-release", "not its fixed content")
    for f, rule in [("/etc/hostname", HOSTNAME), ("/etc/machine-id", MACHINE_ID),
                    ("/etc/mqtt-client-id", MQTT_ID), ("/etc/mqtt-group-id", MQTT_ID)]:
        if f not in files:
            continue
        v = files[f]
        if not v.endswith(b"\n") or not rule.match(v[:-1].decode("latin-1")) or \
                (f == "/etc/machine-id" and v[:-1] == b"0" * 32):
            raise Bad("fixed-file-values", f"{f} holds {v!r}")
    return files


# --- the verifier ---------------------------------------------------------

def verify(bundle, roots, serial, high_water, clock, floor, kept, max_image):
    """Runs the checks of section 3 in order; returns the statement or
    raises Refused."""
    if len(bundle) < 12:
        refuse(1, f"{len(bundle)} bytes")
    if bundle[:8] != MAGIC:
        refuse(2, "no magic")
    (n,) = struct.unpack(">I", bundle[8:12])
    if not 1 <= n <= MAX_STATEMENT:
        refuse(3, f"statement size {n}")
    if len(bundle) < 12 + n:
        refuse(4, "statement cut short")
    jws = bundle[12:12 + n]
    parts = jws.split(b".")
    if len(parts) != 3:
        refuse(5, f"{len(parts)} parts")
    raw = []
    for p in parts:
        try:
            text = p.decode("ascii")
        except UnicodeDecodeError:
            refuse(5, "not ASCII")
        r = b64url_canonical(text)
        if r is None:
            refuse(5, "not canonical base64url")
        raw.append(r)

    header = parse_object(raw[0], 6)
    check_members(header, {"alg": "string", "typ": "string", "x5c": "array"}, 7)
    if any(not isinstance(c, str) for c in header["x5c"]):
        refuse(7, "x5c holds a non-string")
    if header["alg"] != "EdDSA" or header["typ"] != MEDIA_TYPE:
        refuse(8, f"alg {header['alg']!r} typ {header['typ']!r}")
    x5c = header["x5c"]
    if not 1 <= len(x5c) <= 4:
        refuse(9, f"{len(x5c)} certificates")
    chain = []
    for s in x5c:
        d = b64std_canonical(s)
        if d is None:
            refuse(9, "x5c entry is not canonical base64")
        try:
            c = x509.load_der_x509_certificate(d)
            _ = c.extensions  # parse them now: a certificate that does not parse is malformed
            _ = c.public_key()
        except Exception as e:  # noqa: BLE001 - any parse failure is the same refusal
            refuse(9, f"x5c entry does not parse: {e}")
        chain.append(c)

    # Step 10: the chain as presented.
    seen = set()
    for i, c in enumerate(chain):
        issuer, subject = raw_names(c)
        if issuer == subject:
            refuse(10, f"certificate {i} is self-issued")
        if der(c) in seen:
            refuse(10, f"certificate {i} appears twice")
        seen.add(der(c))
    for i in range(len(chain) - 1):
        if raw_names(chain[i])[0] != raw_names(chain[i + 1])[1]:
            refuse(10, f"certificate {i} is not issued by certificate {i + 1}")
        why = signed_by(chain[i], chain[i + 1])
        if why:
            refuse(10, f"certificate {i}: {why}")
    root = None
    for r in roots:
        if raw_names(chain[-1])[0] == raw_names(r)[1] and signed_by(chain[-1], r) is None:
            root = r
            break
    if root is None:
        refuse(10, "the last certificate is not issued by a pinned root")
    path = chain + [root]

    # Step 11: the CA rules.
    for i, c in enumerate(path):
        for e in c.extensions:
            if e.critical and e.oid.dotted_string not in KNOWN_CRITICAL:
                refuse(11, f"certificate {i} has the critical extension {e.oid.dotted_string}")
        if i == 0:
            continue
        bc = ext(c, OID_BC)
        if bc is None or not bc.value.ca:
            refuse(11, f"certificate {i} is not a CA")
        ku = ext(c, OID_KU)
        if ku is not None and not ku.value.key_cert_sign:
            refuse(11, f"CA {i} lacks keyCertSign")
        eku = ext(c, OID_EKU)
        if eku is not None and EKU_ANY not in [u.dotted_string for u in eku.value]:
            refuse(11, f"CA {i} has an extended key usage other than anyExtendedKeyUsage")
        if bc.value.path_length is not None and i - 1 > bc.value.path_length:
            refuse(11, f"CA {i} allows {bc.value.path_length} CAs below it")
        why = check_name_constraints(c, chain[0])
        if why:
            refuse(11, why)
    start = max(not_before(c) for c in path)
    end = min(not_after(c) for c in path)
    if start > end:
        refuse(11, "no moment when every certificate is valid")

    # Step 12: the signer.
    why = signer_rules(chain[0], trust_domain(root))
    if why:
        refuse(12, why)

    # Step 13: the clock, for a bundle being fetched.
    if not kept:
        at = max(clock, floor) if floor else clock
        if at > end:
            refuse(13, "the signer's path has expired")
        if at < start and floor is None:
            refuse(13, "the signer's path is not valid yet")

    # Step 14: the signature.
    try:
        chain[0].public_key().verify(raw[2], parts[0] + b"." + parts[1])
    except InvalidSignature:
        refuse(14, "signature does not verify")

    # Steps 15-17: the statement.
    st = parse_object(raw[1], 15)
    if "format" not in st or integer(st["format"]) != 1:
        refuse(16, "format is not 1")
    check_members(st, {"format": "number", "serial": "string", "generation": "number",
                       "sha256": "string", "length": "number", "issuedAt": "string"}, 17)
    if not re.fullmatch(r"[0-9a-f]{10}", st["serial"]):
        refuse(17, "serial")
    if not re.fullmatch(r"[0-9a-f]{64}", st["sha256"]):
        refuse(17, "sha256")
    gen, length = integer(st["generation"]), integer(st["length"])
    if gen is None or gen < 1:
        refuse(17, "generation")
    if length is None:
        refuse(17, "length")
    issued_text = st["issuedAt"]
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", issued_text):
        refuse(17, "issuedAt spelling")
    try:
        issued = datetime.datetime.strptime(issued_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        refuse(17, "issuedAt is not a date and time")
    if issued.strftime("%Y-%m-%dT%H:%M:%SZ") != issued_text:
        refuse(17, "issuedAt is not a date and time")

    # Step 18: the issue time lies within the path's validity.
    if not start <= issued <= end:
        refuse(18, "issuedAt outside the signer's validity")
    if st["serial"] != serial:
        refuse(19, "another device's")
    if gen < high_water:
        refuse(20, f"generation {gen} < {high_water}")
    if length > max_image:
        refuse(21, f"{length} bytes")
    image = bundle[12 + n:]
    if len(image) < length:
        refuse(22, "image cut short")
    if len(image) > length:
        refuse(23, "bytes after the image")
    if hashlib.sha256(image).hexdigest() != st["sha256"]:
        refuse(24, "sha256")

    # Step 25: the pre-mount inspection (section 6); then step 40.
    try:
        files = inspect_image(image, st["serial"], gen)
    except Bad as e:
        raise Refused(25, str(e), e.check)
    meta = files["/etc/prov/image.json"]
    want = '{"format":1,"serial":"%s","generation":%d,"issuedAt":"%s"}\n' % (st["serial"], gen, issued_text)
    if meta != want.encode():
        refuse(40, "image.json is not the statement's")
    return st


def load_roots(path):
    text = open(path, encoding="ascii").read()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return [x509.load_der_x509_certificate(base64.b64decode("".join(b.split()))) for b in blocks]


def when(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def main(argv):
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    suite = args[0] if args else os.path.dirname(os.path.abspath(__file__))
    manifest = json.load(open(os.path.join(suite, "cases.json"), encoding="utf-8"))
    roots = load_roots(os.path.join(suite, manifest["root"]))
    wrong = 0
    for c in manifest["cases"]:
        bundle = open(os.path.join(suite, c["bundle"]), "rb").read()
        floor = when(c["floor"]) if c.get("floor") else None
        try:
            verify(bundle, roots, c["serial"], c["highWater"], when(c["clock"]), floor, c["kept"], manifest["maxImageSize"])
            got = {"verdict": "accepted"}
            detail = ""
        except Refused as e:
            got = {"verdict": "refused", "error": e.reason, "step": e.step}
            if e.check:
                got["check"] = e.check
            detail = str(e)
        want = {"verdict": c["verdict"]}
        if c["verdict"] == "refused":
            want.update(error=c.get("error"), step=c.get("step"))
            if c.get("check"):
                want["check"] = c["check"]
        ok = got == want
        wrong += not ok
        if as_json:
            print(json.dumps({"name": c["name"], "ok": ok, "got": got, "want": want, "detail": detail}))
        elif not ok:
            print(f"DISAGREES {c['name']}: got {got} ({detail}), cases.json says {want}")
    if not as_json:
        print(f"{len(manifest['cases']) - wrong} of {len(manifest['cases'])} cases agree")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
