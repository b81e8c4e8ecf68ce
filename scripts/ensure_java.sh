#!/usr/bin/env bash
# PySpark 4 needs a Java runtime, 17 or newer. Make sure one is there for the Spark tests:
# use JAVA_HOME or `java` on PATH when it is recent enough, else install the distribution's
# default headless JRE (Debian/Ubuntu: default-jre-headless, which is 17 on Debian 12 and
# 21 on Debian 13 / Ubuntu 24.04) with apt-get, as root or through passwordless sudo.
# Exit 0 when a suitable Java is available afterwards, 1 otherwise (the Spark tests then
# skip with a message saying so).
set -u

java_major() {  # major version of the java binary $1, or 0
  local out
  out=$("$1" -version 2>&1 | head -n 1) || { echo 0; return; }
  # 'openjdk version "17.0.15" ...', 'java version "21" ...', old style 'version "1.8.0_392"'
  local v
  v=$(printf '%s' "$out" | sed -nE 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/p')
  set -- $v
  if [ "${1:-0}" = "1" ]; then echo "${2:-0}"; else echo "${1:-0}"; fi
}

have_java() {
  local bin
  for bin in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null)"; do
    if [ -n "$bin" ] && [ -x "$bin" ] && [ "$(java_major "$bin")" -ge 17 ]; then
      echo "ensure_java: using $bin (Java $(java_major "$bin"))" >&2
      return 0
    fi
  done
  return 1
}

have_java && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_java: no Java 17+ found and no apt-get to install one; install a JRE 17+ (or set JAVA_HOME)." \
       "Spark tests will be skipped" >&2
  exit 1
fi
if [ "$(id -u)" = "0" ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "ensure_java: no Java 17+ found and not root (no passwordless sudo); run:" \
       "sudo apt-get install default-jre-headless. Spark tests will be skipped" >&2
  exit 1
fi

echo "ensure_java: installing a Java runtime for the Spark tests (apt-get install default-jre-headless)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends default-jre-headless; } >&2; then
  echo "ensure_java: apt-get could not install default-jre-headless; Spark tests will be skipped" >&2
  exit 1
fi
hash -r
if have_java; then
  exit 0
fi
echo "ensure_java: default-jre-headless installed but it is older than Java 17 on this system;" \
     "install openjdk-17-jre-headless (or newer). Spark tests will be skipped" >&2
exit 1
