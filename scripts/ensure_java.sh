#!/usr/bin/env bash
# PySpark needs a Java runtime (17 or newer). Install Debian's when none is found.
set -u
if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure_java: installing a Java runtime for the Spark tests (apt-get)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless) >&2 || {
    echo "ensure_java: could not install Java; Spark tests will be skipped" >&2; exit 1; }
else
  echo "ensure_java: no Java 17+ and no root/apt-get; Spark tests will be skipped" >&2
  exit 1
fi
