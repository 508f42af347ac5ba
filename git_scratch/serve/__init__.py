"""`git-scratch serve`: captions and answers over HTTP (app.py), batched across requests (batcher.py), with a page
to try it in a browser (page/). Needs the `serve` extra: pip install 'git_scratch[serve]'."""
