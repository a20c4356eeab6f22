# Package mcpfw.lib.filesystem holds the helpers of mcpfw.rules.filesystem
# (credential-file recognition).
#
# They are functions that receive their configuration as arguments: called
# from the decision they read no data, and regorus 0.13 loses a module's
# imports inside a function called from another module.
package mcpfw.lib.filesystem

# secret_file(path, lists) holds when the lower-cased canonical path names a
# well-known credential file according to lists (config.secret_files).
secret_file(path, lists) if {
	_secret_path(path, lists)
	not strings.any_prefix_match(path, lists.allowed_prefixes)
}

_secret_path(path, lists) if {
	name := _basename(path)
	_secret_name(name, lists)
	not _allowed_name(name, lists)
}

_secret_path(path, lists) if strings.any_suffix_match(path, lists.path_suffixes)

# Directories end with "/": "/.ssh/" matches "/home/u/.ssh" and what is below.
_secret_path(path, lists) if {
	dir_path := concat("", [path, "/"])
	some directory in lists.directories
	contains(dir_path, directory)
}

_secret_name(name, lists) if name in lists.names

_secret_name(name, lists) if strings.any_prefix_match(name, lists.name_prefixes)

_secret_name(name, lists) if strings.any_suffix_match(name, lists.extensions)

_allowed_name(name, lists) if name in lists.allowed_names

_allowed_name(name, lists) if strings.any_suffix_match(name, lists.allowed_extensions)

_basename(path) := name if {
	parts := split(path, "/")
	name := parts[count(parts) - 1]
}

# prefilter(lists) is the value config.secret_files.prefilter must have: every
# entry of the five lists that make a path secret, with the regular-expression
# metacharacters escaped, joined with "|". Used by the tests, not per message.
prefilter(lists) := concat("|", [regex.replace(entry, `[\\.+*?()|\[\]{}^$]`, `\$0`) |
	some key in ["names", "name_prefixes", "extensions", "directories", "path_suffixes"]
	some entry in lists[key]
])
