"""Local web pages: ``autolabel view`` over a run and ``autolabel tune`` over sample images."""
