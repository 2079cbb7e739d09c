"""miajax: membership-inference auditing with many shadow models trained at once."""
