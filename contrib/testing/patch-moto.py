"""Makes moto 5.1.22's SigV4 checker use the query string as it was sent.

moto rebuilds the canonical request from werkzeug's request.url, in which a %2F inside a
query value has been decoded to '/'. botocore then signs `prefix=backups/` while every
client (boto3 too) signed `prefix=backups%2F`, so each listing with a '/' in its prefix gets
SignatureDoesNotMatch. The patch keeps the checker as strict as before; it only hands it
the raw query (werkzeug's RAW_URI, which is what was signed). Idempotent.

Usage: patch-moto.py SITE_PACKAGES_DIR
"""
import pathlib
import sys

MARK = "# btrfs_to_s3 test rig: raw query"
core = pathlib.Path(sys.argv[1]) / "moto" / "core"


def patch(path, old, new):
    text = path.read_text()
    if MARK in text:
        return
    if text.count(old) != 1:
        sys.exit(f"patch-moto.py: {path} does not have the expected code (moto is not 5.1.22?)")
    path.write_text(text.replace(old, new))


patch(core / "responses.py",
      "        self.uri = full_url\n",
      "        self.uri = full_url\n"
      f"        {MARK}\n"
      "        self.raw_query = (urlparse(request.environ.get('RAW_URI', '')).query\n"
      "                          if self.is_werkzeug_request else None)\n")
patch(core / "authorization.py",
      "            if parsed_url.query:\n                path += \"?\" + parsed_url.query\n",
      f"            {MARK}\n"
      "            query = getattr(self, 'raw_query', None) or parsed_url.query\n"
      "            if query:\n                path += \"?\" + query\n")
