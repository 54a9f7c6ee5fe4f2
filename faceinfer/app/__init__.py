"""The extract application: ``faceinfer extract`` and its Python form, :func:`extract`.

* :mod:`~faceinfer.app.settings`: every option, typed and checked before any work starts;
* :mod:`~faceinfer.app.extraction`: the run itself (sources -> pipeline -> faces and
  alignments), with Ctrl-C handling and the summary;
* :mod:`~faceinfer.app.output`: what each source writes, and what a resumed run skips;
* :mod:`~faceinfer.app.face_images`: face crops, thumbnails and the debug overlay;
* :mod:`~faceinfer.app.progress`: the progress bar.
"""
from faceinfer.app.extraction import Extraction, ExtractSummary, extract
from faceinfer.app.settings import ExtractSettings

__all__ = ["ExtractSettings", "ExtractSummary", "Extraction", "extract"]
