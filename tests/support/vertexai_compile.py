"""`kedro vertexai ...` offline: kedro-vertexai's own CLI with only `aiplatform.init` idle.

Run with the kedro-vertexai environment's interpreter, in the project folder, with the
arguments of `kedro`. kedro-vertexai's client calls `google.cloud.aiplatform.init(project=...)`
before it compiles, which looks for GCP credentials; compiling itself talks to nobody. Nothing
else of kedro-vertexai, KFP or Kedro is touched.
"""

import sys

import google.cloud.aiplatform

google.cloud.aiplatform.init = lambda *args, **kwargs: None

from kedro.framework.cli import main  # noqa: E402

sys.argv = ["kedro", *sys.argv[1:]]
main()
