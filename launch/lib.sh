# Shell helpers shared by the launch scripts (sourced; set SCRIPT to the script's name first).

die() { echo "$SCRIPT: $*" >&2; exit 2; }

# Option parsing: fail when option $1 has no value ($2 = number of arguments left, the option included).
need_value() { (($2 >= 2)) || die "$1 needs a value"; }

# Words shell-quoted only where needed, so that the printed commands stay readable and can be pasted.
quoted() {
  local out="" word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
      out+="$word "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}
