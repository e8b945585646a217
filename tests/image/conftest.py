"""Image tests run by `make test-image` (scripts/image.sh test sets RETINA_IMAGE_TESTS=1 and CONTAINERS_CONF after
`make image`); `make test` does not even collect them."""

import os

if os.environ.get("RETINA_IMAGE_TESTS") != "1":
    collect_ignore_glob = ["*"]
