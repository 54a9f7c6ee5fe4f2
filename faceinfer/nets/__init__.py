"""PyTorch networks written in this project for models whose weights come from elsewhere (dlib's
``.dat`` files, read by :mod:`faceinfer.formats.dlib_dat`)."""
