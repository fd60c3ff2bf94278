"""`llm-switch completion bash|zsh`: the shell completion script, made from the parser itself
(cli/parser.py), so a new subcommand or option is completed without anyone editing a script.
Model names come from `llm-switch ls --names` when a tab is pressed: the config as it is now."""

from __future__ import annotations

import argparse

from . import parser as parser_mod

# what a subcommand's positional argument is: model names from the config, or files
_FILE_ARGUMENT = ("add", "import")


def run(args) -> int:
    spec = commands(parser_mod.build())
    print(bash_script(spec) if args.shell == "bash" else zsh_script(spec), end="")
    return 0


def commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[str]]]:
    """{subcommand: (its help, its options)}, in the parser's order."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    return {name: (helps.get(name, ""), [o for a in p._actions for o in a.option_strings
                                         if o.startswith("--") and o != "--help"])
            for name, p in sub.choices.items()}


def _argument_kind(command: str) -> str:
    if command in parser_mod.MODEL_ARGUMENT:
        return "models"
    if command in _FILE_ARGUMENT:
        return "files"
    return "shells" if command == "completion" else "none"


def bash_script(spec: dict[str, tuple[str, list[str]]]) -> str:
    options = "\n".join(f"        {name}) opts='{' '.join(opts)}' ;;" for name, (_, opts) in spec.items())
    kinds = "\n".join(f"        {name}) kind={_argument_kind(name)} ;;" for name in spec)
    return _BASH.replace("@COMMANDS@", " ".join(spec)).replace("@OPTIONS@", options).replace("@KINDS@", kinds)


def zsh_script(spec: dict[str, tuple[str, list[str]]]) -> str:
    # _describe reads NAME:HELP, so a colon in the help is escaped
    described = "\n".join("    " + _zsh_quote(name + ":" + text.replace(":", "\\:"))
                          for name, (text, _) in spec.items())
    options = "\n".join(f"    {name}) opts=({' '.join(opts)}) ;;" for name, (_, opts) in spec.items())
    kinds = "\n".join(f"    {name}) kind={_argument_kind(name)} ;;" for name in spec)
    return _ZSH.replace("@DESCRIBED@", described).replace("@OPTIONS@", options).replace("@KINDS@", kinds)


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


_BASH = r"""# bash completion for llm-switch (made by `llm-switch completion bash`)
_llm_switch_models() {
    local i config=()
    for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
        [ "${COMP_WORDS[i]}" = --config ] && config=(--config "${COMP_WORDS[i+1]}")
    done
    llm-switch ls --names "${config[@]}" 2>/dev/null
}

_llm_switch() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd= i opts= kind=none
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac
    done
    if [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W "@COMMANDS@ --version --help" -- "$cur"))
        return
    fi
    case $prev in
        --config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --url|--listen|--host|--api-key|--ctx|--port|--alias|-n|--lines) return ;;
    esac
    case $cmd in
@OPTIONS@
    esac
    case $cmd in
@KINDS@
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    elif [ $kind = models ]; then
        COMPREPLY=($(compgen -W "$(_llm_switch_models)" -- "$cur"))
    elif [ $kind = files ]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    elif [ $kind = shells ]; then
        COMPREPLY=($(compgen -W "bash zsh" -- "$cur"))
    fi
}
complete -F _llm_switch llm-switch
"""

_ZSH = r"""#compdef llm-switch
# zsh completion for llm-switch (made by `llm-switch completion zsh`)
_llm_switch() {
  local -a commands opts models config
  local cmd kind=none i
  commands=(
@DESCRIBED@
  )
  if (( CURRENT == 2 )); then
    _describe 'command' commands
    return
  fi
  cmd=${words[2]}
  case ${words[CURRENT-1]} in
    --config) _files; return ;;
    --url|--listen|--host|--api-key|--ctx|--port|--alias|-n|--lines) return ;;
  esac
  case $cmd in
@OPTIONS@
  esac
  case $cmd in
@KINDS@
  esac
  if [[ ${words[CURRENT]} == -* ]]; then
    compadd -- $opts --help
  elif [[ $kind == models ]]; then
    i=${words[(i)--config]}
    (( i < CURRENT )) && config=(--config ${words[i+1]})
    models=(${(f)"$(llm-switch ls --names $config 2>/dev/null)"})
    compadd -a models
  elif [[ $kind == files ]]; then
    _files
  elif [[ $kind == shells ]]; then
    compadd bash zsh
  fi
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _llm_switch "$@"
else
  compdef _llm_switch llm-switch
fi
"""
