#!/usr/bin/env python3
"""Prove the S3 behaviour Silverline relies on against a running test server.

Usage:
    scripts/s3server.sh start DIR && . DIR/env
    python3 tests/s3server/check_conditional.py

Reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
SILVERLINE_TEST_RO_ACCESS_KEY_ID / SILVERLINE_TEST_RO_SECRET_ACCESS_KEY from the
environment. Standard library only: requests are signed with SigV4 here and sent
path-style (http://host:port/bucket/key), as object_store does against an endpoint.

Checks, in a fresh bucket:
  * PUT If-None-Match: * on a new key -> 200; again -> 412
  * PUT If-Match: <current ETag> -> 200; with the stale ETag -> 412;
    If-Match on a missing key -> 404 (object_store maps it to Precondition)
  * racing conditional PUTs: exactly one of N concurrent creates (and of N
    concurrent If-Match updates from the same ETag) wins, the rest get 412,
    and the stored object is the winner's
  * multipart create / upload-part / complete, ETag "<md5>-2", content intact;
    CompleteMultipartUpload with If-None-Match: * on an existing key -> 412,
    and object_store's copy-if-not-exists recipe (UploadPartCopy + that) works
  * abort removes the upload (ListParts -> 404 NoSuchUpload, not listed)
  * the read-only identity can GET and list but gets 403 on PUT
Prints one line per check and a closing "N passed, N failed" line; exits 1 on
any failure.
"""

import datetime
import hashlib
import hmac
import http.client
import os
import re
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
REGION = os.environ.get("AWS_REGION", "us-east-1")
ADMIN = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
RO = (
    os.environ.get("SILVERLINE_TEST_RO_ACCESS_KEY_ID", ""),
    os.environ.get("SILVERLINE_TEST_RO_SECRET_ACCESS_KEY", ""),
)
_u = urllib.parse.urlsplit(ENDPOINT)
HOST, PORT = _u.hostname, _u.port or 80
HOSTHDR = f"{HOST}:{PORT}" if _u.port else HOST


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    @property
    def etag(self):
        return self.headers.get("etag")

    def code(self):
        m = re.search(rb"<Code>([^<]+)</Code>", self.body or b"")
        return m.group(1).decode() if m else ""

    def __repr__(self):
        return f"{self.status} {self.code()} {self.body[:300]!r}"


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def request(method, path, query=None, body=b"", headers=None, creds=ADMIN):
    """Send one SigV4-signed, path-style request. path is '/bucket/key' (unencoded)."""
    query = query or {}
    headers = dict(headers or {})
    now = datetime.datetime.now(datetime.timezone.utc)
    amzdate = now.strftime("%Y%m%dT%H%M%SZ")
    datestamp = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical_uri = urllib.parse.quote(path, safe="/-_.~")
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(query.items())
    )
    headers.update(
        {"host": HOSTHDR, "x-amz-date": amzdate, "x-amz-content-sha256": payload_hash}
    )
    signed = {k.lower(): str(v).strip() for k, v in headers.items()}
    signed_names = ";".join(sorted(signed))
    canonical_headers = "".join(f"{k}:{signed[k]}\n" for k in sorted(signed))
    creq = "\n".join(
        [method, canonical_uri, canonical_query, canonical_headers, signed_names, payload_hash]
    )
    scope = f"{datestamp}/{REGION}/s3/aws4_request"
    sts = "\n".join(
        ["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()]
    )
    k = _sign(("AWS4" + creds[1]).encode(), datestamp)
    k = _sign(_sign(_sign(k, REGION), "s3"), "aws4_request")
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds[0]}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={sig}"
    )
    url = canonical_uri + ("?" + canonical_query if canonical_query else "")
    conn = http.client.HTTPConnection(HOST, PORT, timeout=60)
    try:
        conn.request(method, url, body=body, headers=headers)
        r = conn.getresponse()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


PASSED, FAILED = 0, 0
T0 = time.monotonic()


def check(name, cond, detail=""):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print(f"ok    {name}  [{time.monotonic() - T0:.2f}s]")
    else:
        FAILED += 1
        print(f"FAIL  {name}  {detail}  [{time.monotonic() - T0:.2f}s]")
    return cond


def race(path, n, headers_for, body_for):
    """Fire n PUTs at once (threads released by a barrier); return [(i, Resp)]."""
    barrier = threading.Barrier(n)
    out = [None] * n

    def worker(i):
        barrier.wait()
        try:
            out[i] = request("PUT", path, body=body_for(i), headers=headers_for(i))
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            out[i] = Resp(0, [], repr(e).encode())

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return list(enumerate(out))


def main():
    bucket = "cond-" + uuid.uuid4().hex[:12]
    b = f"/{bucket}"
    print(f"endpoint {ENDPOINT}, bucket {bucket}")

    r = request("PUT", b)
    check("create bucket", r.status == 200, r)
    r = request("GET", "/")
    check("list buckets shows it", r.status == 200 and bucket.encode() in r.body, r)

    # --- If-None-Match: * ---------------------------------------------------
    key = f"{b}/commits/00000001.json"
    r1 = request("PUT", key, body=b"v1", headers={"If-None-Match": "*"})
    check("PUT If-None-Match:* on new key -> 200", r1.status == 200, r1)
    etag1 = r1.etag
    check("PUT returns an ETag", bool(etag1), r1.headers)
    r = request("PUT", key, body=b"v1-again", headers={"If-None-Match": "*"})
    check("PUT If-None-Match:* on existing key -> 412", r.status == 412, r)
    check("  ... error code PreconditionFailed", r.code() == "PreconditionFailed", r)
    r = request("GET", key)
    check("object still holds the first write", r.status == 200 and r.body == b"v1", r)

    # --- If-Match ------------------------------------------------------------
    r2 = request("PUT", key, body=b"v2", headers={"If-Match": etag1})
    check("PUT If-Match:<current etag> -> 200", r2.status == 200, r2)
    etag2 = r2.etag
    check("  ... new ETag differs", bool(etag2) and etag2 != etag1, (etag1, etag2))
    r = request("PUT", key, body=b"v3", headers={"If-Match": etag1})
    check("PUT If-Match:<stale etag> -> 412", r.status == 412, r)
    r = request("GET", key)
    check("object holds v2 after the stale write", r.body == b"v2", r)
    r = request("HEAD", key)
    check("HEAD ETag equals the PUT ETag", r.status == 200 and r.etag == etag2, r.headers)
    r = request("PUT", f"{b}/missing", body=b"x", headers={"If-Match": etag2})
    check("PUT If-Match on missing key -> 404 (NoSuchKey)", r.status == 404, r)
    r = request("PUT", key, body=b"v3", headers={"If-Match": etag2.strip('"')})
    check("PUT If-Match with unquoted etag -> 200", r.status == 200, r)

    # --- races ---------------------------------------------------------------
    n = 16
    for rnd in range(3):
        rkey = f"{b}/race/create-{rnd}"
        res = race(rkey, n, lambda i: {"If-None-Match": "*"}, lambda i: f"w{i}".encode())
        wins = [i for i, x in res if x.status == 200]
        others = sorted({x.status for _, x in res if x.status != 200})
        got = request("GET", rkey).body
        check(
            f"race {rnd}: {n} concurrent If-None-Match:* creates -> one 200, rest 412",
            len(wins) == 1 and others == [412] and got == f"w{wins[0]}".encode(),
            f"wins={wins} others={others} stored={got!r}",
        )
    ukey = f"{b}/race/update"
    base = request("PUT", ukey, body=b"base").etag
    for rnd in range(3):
        res = race(ukey, n, lambda i: {"If-Match": base}, lambda i: f"u{rnd}-{i}".encode())
        wins = [(i, x.etag) for i, x in res if x.status == 200]
        others = sorted({x.status for _, x in res if x.status != 200})
        got = request("GET", ukey)
        ok = (
            len(wins) == 1
            and others == [412]
            and got.body == f"u{rnd}-{wins[0][0]}".encode()
            and got.etag == wins[0][1]
        )
        check(
            f"race {rnd}: {n} concurrent If-Match:<same etag> updates -> one 200, rest 412",
            ok,
            f"wins={wins} others={others} stored={got.body!r}",
        )
        base = got.etag

    # --- multipart -----------------------------------------------------------
    mkey = f"{b}/data/part-0.parquet"
    r = request("POST", mkey, query={"uploads": ""})
    check("CreateMultipartUpload -> 200", r.status == 200, r)
    upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", r.body).group(1).decode()
    part1 = os.urandom(5 * 1024 * 1024)
    part2 = os.urandom(123_457)
    etags = []
    for num, data in ((1, part1), (2, part2)):
        r = request("PUT", mkey, query={"partNumber": str(num), "uploadId": upload_id}, body=data)
        check(f"UploadPart {num} ({len(data)} bytes) -> 200", r.status == 200 and r.etag, r)
        etags.append(r.etag)
    complete = "<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{i + 1}</PartNumber><ETag>{e}</ETag></Part>" for i, e in enumerate(etags)
    ) + "</CompleteMultipartUpload>"
    r = request("POST", mkey, query={"uploadId": upload_id}, body=complete.encode())
    check("CompleteMultipartUpload -> 200", r.status == 200 and b"<ETag>" in r.body, r)
    mp_etag = re.search(rb"<ETag>([^<]+)</ETag>", r.body)
    mp_etag = mp_etag.group(1).decode().replace("&#34;", '"').replace("&quot;", '"') if mp_etag else ""
    want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in (part1, part2))).hexdigest() + "-2"
    check("  ... multipart ETag is md5-of-md5s-2", mp_etag.strip('"') == want, (mp_etag, want))
    r = request("GET", mkey)
    check("  ... GET returns the concatenated parts", r.status == 200 and r.body == part1 + part2,
          f"{r.status} len={len(r.body)}")
    r = request("GET", mkey, headers={"Range": "bytes=5242870-5242889"})
    check("  ... ranged GET across the part boundary", r.status == 206 and r.body == (part1 + part2)[5242870:5242890], r.status)

    # CompleteMultipartUpload with If-None-Match: * (object_store copy_if_not_exists=multipart)
    r = request("POST", mkey, query={"uploads": ""})
    uid2 = re.search(rb"<UploadId>([^<]+)</UploadId>", r.body).group(1).decode()
    r = request("PUT", mkey, query={"partNumber": "1", "uploadId": uid2}, body=b"other")
    body2 = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{r.etag}</ETag></Part></CompleteMultipartUpload>"
    r = request("POST", mkey, query={"uploadId": uid2}, body=body2.encode(), headers={"If-None-Match": "*"})
    check("CompleteMultipartUpload If-None-Match:* on existing key -> 412", r.status == 412, r)
    r = request("GET", mkey)
    check("  ... object unchanged", r.body == part1 + part2, len(r.body))
    request("DELETE", mkey, query={"uploadId": uid2})
    nkey = f"{b}/data/new-by-mpu"
    r = request("POST", nkey, query={"uploads": ""})
    uid3 = re.search(rb"<UploadId>([^<]+)</UploadId>", r.body).group(1).decode()
    r = request("PUT", nkey, query={"partNumber": "1", "uploadId": uid3}, body=b"fresh")
    body3 = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{r.etag}</ETag></Part></CompleteMultipartUpload>"
    r = request("POST", nkey, query={"uploadId": uid3}, body=body3.encode(), headers={"If-None-Match": "*"})
    check("CompleteMultipartUpload If-None-Match:* on new key -> 200", r.status == 200, r)

    # object_store's S3CopyIfNotExists::Multipart: UploadPartCopy + Complete(If-None-Match: *)
    def copy_if_not_exists(src, dst):
        r = request("POST", dst, query={"uploads": ""})
        uid = re.search(rb"<UploadId>([^<]+)</UploadId>", r.body).group(1).decode()
        r = request("PUT", dst, query={"partNumber": "1", "uploadId": uid},
                    headers={"x-amz-copy-source": urllib.parse.quote(src)})
        m = re.search(rb"<ETag>([^<]+)</ETag>", r.body)
        if r.status != 200 or not m:
            request("DELETE", dst, query={"uploadId": uid})
            return r
        e = m.group(1).decode().replace("&#34;", '"').replace("&quot;", '"')
        body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{e}</ETag></Part></CompleteMultipartUpload>"
        r = request("POST", dst, query={"uploadId": uid}, body=body.encode(), headers={"If-None-Match": "*"})
        if r.status != 200:
            request("DELETE", dst, query={"uploadId": uid})
        return r

    ckey = f"{b}/data/copied.json"
    r = copy_if_not_exists(key, ckey)
    check("copy-if-not-exists (UploadPartCopy + Complete If-None-Match:*) to new key -> 200", r.status == 200, r)
    r = request("GET", ckey)
    check("  ... copy has the source bytes", r.body == b"v3", r)
    r = copy_if_not_exists(mkey, ckey)
    check("copy-if-not-exists onto an existing key -> 412", r.status == 412, r)
    check("  ... copy unchanged", request("GET", ckey).body == b"v3")

    # --- abort ---------------------------------------------------------------
    akey = f"{b}/data/aborted.parquet"
    r = request("POST", akey, query={"uploads": ""})
    aid = re.search(rb"<UploadId>([^<]+)</UploadId>", r.body).group(1).decode()
    r = request("PUT", akey, query={"partNumber": "1", "uploadId": aid}, body=os.urandom(1024))
    check("UploadPart for the upload to abort -> 200", r.status == 200, r)
    r = request("GET", b, query={"uploads": ""})
    check("ListMultipartUploads shows it", r.status == 200 and aid.encode() in r.body, r)
    r = request("DELETE", akey, query={"uploadId": aid})
    check("AbortMultipartUpload -> 204", r.status == 204, r)
    r = request("GET", akey, query={"uploadId": aid})
    check("ListParts after abort -> 404 NoSuchUpload", r.status == 404 and r.code() == "NoSuchUpload", r)
    r = request("GET", b, query={"uploads": ""})
    check("ListMultipartUploads no longer shows it", r.status == 200 and aid.encode() not in r.body, r)
    r = request("HEAD", akey)
    check("no object was created by the aborted upload", r.status == 404, r.status)

    # --- listing -------------------------------------------------------------
    r = request("GET", b, query={"list-type": "2", "prefix": "commits/"})
    keys = [e.text for e in ET.fromstring(r.body).iter() if e.tag.endswith("}Key") or e.tag == "Key"]
    check("ListObjectsV2 prefix=commits/", r.status == 200 and keys == ["commits/00000001.json"], keys)

    # --- read-only identity ----------------------------------------------------
    if RO[0]:
        r = request("PUT", f"{b}/ro-attempt", body=b"x", creds=RO)
        check("read-only identity PUT -> 403", r.status == 403, r)
        check("  ... error code AccessDenied", r.code() == "AccessDenied", r)
        r = request("GET", key, creds=RO)
        check("read-only identity GET -> 200", r.status == 200 and r.body == b"v3", r)
        r = request("GET", b, query={"list-type": "2"}, creds=RO)
        check("read-only identity ListObjectsV2 -> 200", r.status == 200, r)
        r = request("DELETE", key, creds=RO)
        check("read-only identity DELETE -> 403", r.status == 403, r)
    else:
        check("read-only identity configured", False, "SILVERLINE_TEST_RO_ACCESS_KEY_ID unset")
    r = request("PUT", f"{b}/bad-secret", body=b"x", creds=(ADMIN[0], "wrong" + ADMIN[1][5:]))
    check("wrong secret -> 403 SignatureDoesNotMatch", r.status == 403 and r.code() == "SignatureDoesNotMatch", r)

    # --- cleanup ----------------------------------------------------------------
    r = request("GET", b, query={"list-type": "2"})
    for k in [e.text for e in ET.fromstring(r.body).iter() if e.tag.endswith("}Key") or e.tag == "Key"]:
        request("DELETE", f"{b}/{k}")
    r = request("DELETE", b)
    check("delete emptied bucket -> 204", r.status == 204, r)

    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
