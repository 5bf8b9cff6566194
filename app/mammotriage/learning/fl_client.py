"""A site's FLARE Client API script: receive the global model, train a round, send the update.

FLARE's in-process executor runs this file, installed with the app (the job names no
script and carries no code: :func:`mammotriage.learning.fl_flare.site_executor`). What
it does is :func:`mammotriage.learning.fl_flare.run_site`.
"""

import nvflare.client as flare

from mammotriage.learning.fl_flare import run_site

run_site(flare)
