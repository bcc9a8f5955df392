//! Spec strings that reach a rendered file verbatim, checked against that file's grammar.
//!
//! Each [`Target`] is a file grammar hakube writes words into, with the characters it would not
//! read literally ([`word_for`]). Each [`Rule`] says which targets a spec field reaches and what
//! else the value must be (a Linux interface name, an absolute path, ...). [`check_document`]
//! applies the rule of every string field of the spec, so a value is either refused with a
//! located error that names the character and why, or read back exactly as written.
//!
//! kubeadm files are serialised as data, so any text survives them; fields that reach only those
//! have semantic rules, and `tests/spec_props.rs` proves the round trip. Strings that are parsed
//! (addresses, CIDRs, durations, versions, enums) are rendered from the parsed value. The SSH
//! settings and `stats.passwordFile` are used on the operator's machine only and reach no file.

use super::diag::Diagnostics;
use super::model::Document;

/// A file grammar that spec strings are rendered into as words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// haproxy.cfg: whitespace separates words, `#` starts a comment, quotes and `\` are removed,
    /// `${NAME}` expands an environment variable.
    Haproxy,
    /// keepalived.conf: whitespace separates words, `#` and `!` start a comment anywhere outside
    /// quotes, quotes and `\` are removed, `$NAME` expands a parameter, `{` `}` delimit blocks.
    Keepalived,
    /// An environment file, `KEY=value`: systemd reads it (`EnvironmentFile=`), and sh sources it
    /// for the config test (`render --check`, and `apply` on the host). A value is safe only where
    /// both read it alike: no whitespace, quotes, `\`, `$` or shell syntax.
    EnvFile,
    /// A systemd unit setting such as `ExecStart=`: whitespace separates arguments, quotes and
    /// `\` are removed, `%x` is a specifier, `$NAME` expands a variable, `;` separates commands.
    SystemdUnit,
    /// kubeadm-join.yaml: data, but `apply` fills its `${HAKUBE_…}` placeholders with sed.
    KubeadmJoin,
}

/// Why a character is not read literally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hazard {
    LineEnd,
    Control,
    Space,
    Comment,
    Quote,
    Escape,
    Variable,
    Specifier,
    Block,
    Shell,
    Tilde,
    CommandSeparator,
}

impl Target {
    pub fn file(self) -> &'static str {
        match self {
            Target::Haproxy => "haproxy.cfg",
            Target::Keepalived => "keepalived.conf",
            Target::EnvFile => "the environment file",
            Target::SystemdUnit => "the systemd unit",
            Target::KubeadmJoin => "kubeadm-join.yaml",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Target::Haproxy => "HAProxy",
            Target::Keepalived => "keepalived",
            Target::EnvFile => "sh",
            Target::SystemdUnit => "systemd",
            Target::KubeadmJoin => "apply",
        }
    }

    fn hazard(self, c: char) -> Option<Hazard> {
        use Hazard::*;
        use Target::*;
        if matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}' | '\u{85}') {
            return (self != KubeadmJoin).then_some(LineEnd);
        }
        if c.is_control() || c == '\u{feff}' {
            return (self != KubeadmJoin).then_some(Control);
        }
        if c.is_whitespace() {
            return (self != KubeadmJoin).then_some(Space);
        }
        match (self, c) {
            (Haproxy, '#') | (Keepalived, '#' | '!') => Some(Comment),
            (Haproxy | Keepalived | EnvFile | SystemdUnit, '"' | '\'') => Some(Quote),
            (Haproxy | Keepalived | EnvFile | SystemdUnit, '\\') => Some(Escape),
            (_, '$') => Some(Variable),
            (SystemdUnit, '%') => Some(Specifier),
            (Keepalived, '{' | '}') => Some(Block),
            (EnvFile, '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')') => Some(Shell),
            (EnvFile, '~') => Some(Tilde),
            (SystemdUnit, ';') => Some(CommandSeparator),
            _ => None,
        }
    }

    fn explain(self, h: Hazard, before: &str) -> String {
        let (file, tool) = (self.file(), self.tool());
        match h {
            Hazard::LineEnd => {
                format!("ends the line in {file}: {tool} would read the rest as a new line")
            }
            Hazard::Control => format!("is a control character, which {file} cannot hold"),
            Hazard::Space => match self {
                Target::EnvFile => format!(
                    "ends the value where sh reads {file} (it would run the rest as a command), while systemd keeps it"
                ),
                Target::SystemdUnit => {
                    format!("separates arguments in {file}: systemd would run {before:?}")
                }
                _ => format!("separates words in {file}: {tool} would read only {before:?}"),
            },
            Hazard::Comment => {
                format!("starts a comment in {file}: {tool} would read only {before:?}")
            }
            Hazard::Quote => format!("is a quote in {file}: {tool} would remove it"),
            Hazard::Escape => {
                format!("escapes the next character in {file}: {tool} would remove it")
            }
            Hazard::Variable => match self {
                Target::Haproxy => {
                    format!("starts an environment variable (${{NAME}}) in {file}")
                }
                Target::Keepalived => format!("starts a parameter ($NAME) in {file}"),
                Target::EnvFile => format!("expands a variable when sh reads {file}"),
                Target::SystemdUnit => {
                    format!("expands an environment variable ($NAME) in {file}")
                }
                Target::KubeadmJoin => format!(
                    "could start a placeholder: apply fills ${{HAKUBE_…}} in {file} with the join secrets"
                ),
            },
            Hazard::Specifier => {
                format!("starts a specifier (%n, %h, …) in {file}: systemd would replace it")
            }
            Hazard::Block => format!("opens or closes a block in {file}"),
            Hazard::Shell => format!(
                "is shell syntax, and sh reads {file} (render --check, and apply's config test on the host)"
            ),
            Hazard::Tilde => format!("expands to a home directory when sh reads {file}"),
            Hazard::CommandSeparator => format!("separates commands in {file}"),
        }
    }
}

/// A value that a target would read differently: the first such character and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub ch: char,
    /// 1-based, in characters.
    pub at: usize,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at character {} {}",
            describe(self.ch),
            self.at,
            self.why
        )
    }
}

/// A character as a reader would name it.
pub fn describe(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\n' => "a newline".into(),
        '\t' => "a tab".into(),
        '\r' => "a carriage return".into(),
        c if c.is_control() || c.is_whitespace() || c == '\u{feff}' => {
            format!("the character U+{:04X}", c as u32)
        }
        c => format!("{c:?}"),
    }
}

/// `Ok` when `target` reads `s` back as one word, exactly as written.
pub fn word_for(target: Target, s: &str) -> Result<(), Refusal> {
    for (i, (byte, c)) in s.char_indices().enumerate() {
        if let Some(h) = target.hazard(c) {
            return Err(Refusal {
                ch: c,
                at: i + 1,
                why: target.explain(h, &s[..byte]),
            });
        }
    }
    Ok(())
}

/// What a spec string is, which files it reaches, and what else it must be.
pub struct Rule {
    /// How messages name the value, for example "interface".
    pub what: &'static str,
    pub targets: &'static [Target],
    /// Characters the value's own meaning forbids (a `:` in a user name, ...), and why.
    pub chars: fn(char) -> Option<&'static str>,
    /// Everything else about the value as a whole (empty, too long, not absolute, ...).
    pub shape: fn(&str) -> Option<String>,
    pub help: &'static str,
}

fn no_chars(_: char) -> Option<&'static str> {
    None
}
fn any_shape(_: &str) -> Option<String> {
    None
}

impl Rule {
    /// An absolute path that reaches `targets`.
    pub const fn path(what: &'static str, targets: &'static [Target], help: &'static str) -> Rule {
        Rule {
            what,
            targets,
            chars: no_chars,
            shape: absolute_path,
            help,
        }
    }

    /// Why `value` cannot be used, as the rest of a sentence that names the value.
    pub fn check(&self, value: &str) -> Result<(), String> {
        for t in self.targets {
            word_for(*t, value).map_err(|r| r.to_string())?;
        }
        if let Some((i, c, why)) = value
            .chars()
            .enumerate()
            .find_map(|(i, c)| (self.chars)(c).map(|w| (i, c, w)))
        {
            return Err(format!("{} at character {} {why}", describe(c), i + 1));
        }
        match (self.shape)(value) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// The punctuation this rule allows, for help texts.
    pub fn allowed_punctuation(&self) -> String {
        (0x21u8..0x7f)
            .map(char::from)
            .filter(|c| !c.is_ascii_alphanumeric())
            .filter(|c| {
                (self.chars)(*c).is_none() && self.targets.iter().all(|t| t.hazard(*c).is_none())
            })
            .collect()
    }

    /// Report `value` at `path` unless it is fine, or another rule already refused that field.
    pub fn apply(&self, d: &mut Diagnostics, path: &str, value: &str) {
        if let Err(why) = self.check(value) {
            let reported = d
                .items
                .iter()
                .any(|x| x.severity == super::Severity::Error && x.path == path);
            if !reported {
                d.error(
                    path,
                    format!("{} {value:?}: {why}", self.what),
                    format!(
                        "{}; besides letters and digits this field takes only {}",
                        self.help,
                        self.allowed_punctuation()
                    ),
                );
            }
        }
    }
}

/// An absolute, normalised path: systemd refuses an `ExecStart=` program with `//`, `.` or
/// `..` parts or a trailing `/`, and `apply` moves a data dir aside by appending to its path.
fn absolute_path(s: &str) -> Option<String> {
    if !s.starts_with('/') {
        return Some("is not an absolute path".into());
    }
    if s == "/" || s.ends_with('/') {
        return Some("ends with '/'; name the file or folder itself".into());
    }
    s[1..]
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        .then(|| "is not a normalised path (it has an empty, . or .. part)".into())
}

fn not_empty(s: &str) -> Option<String> {
    s.is_empty().then(|| "is empty".into())
}

/// `metadata.name` and host names: DNS labels (checked by `validate`), which also keeps them
/// literal in every file they reach (comments, server names, router_id, ETCD_NAME, unit text).
pub const NAME: Rule = Rule {
    what: "name",
    targets: &[
        Target::Haproxy,
        Target::Keepalived,
        Target::EnvFile,
        Target::SystemdUnit,
    ],
    chars: no_chars,
    shape: any_shape,
    help: "use lowercase letters, digits and '-'",
};

/// `hosts[].interface`: keepalived's `interface` and `dev`, and a name the kernel can have.
pub const INTERFACE: Rule = Rule {
    what: "interface",
    targets: &[Target::Keepalived],
    chars: |c| match c {
        '/' | ':' => Some("is not allowed in Linux interface names"),
        '%' => Some(
            "is replaced by a number when the kernel names an interface, so no interface has it",
        ),
        '@' => Some("is how `ip` shows a link's peer (NAME@PEER), not part of the name"),
        _ => None,
    },
    shape: |s| {
        if s.is_empty() {
            Some("is empty".into())
        } else if s.len() > 15 {
            Some(format!(
                "has {} bytes; Linux interface names have at most 15",
                s.len()
            ))
        } else if s == "." || s == ".." {
            Some("is not allowed as a Linux interface name".into())
        } else {
            None
        }
    },
    help: "write the name `ip -br link` shows (without any @PEER part), or leave it out to detect it",
};

/// `vrrp.authPass`: keepalived's `auth_pass`, of which it uses the first 8 bytes.
pub const AUTH_PASS: Rule = Rule {
    what: "authPass",
    targets: &[Target::Keepalived],
    chars: no_chars,
    shape: |s| {
        if s.is_empty() {
            Some("is empty, so no authentication would be rendered".into())
        } else if s.len() > 8 && s.chars().count() <= 8 {
            // More than 8 characters is reported by validate; this is the multi-byte case.
            Some(format!(
                "has {} bytes; keepalived silently uses only the first 8",
                s.len()
            ))
        } else {
            None
        }
    },
    help: "use 1-8 ASCII characters",
};

/// `vrrp.scriptUser`: keepalived's `script_user USER [GROUP]`, looked up in /etc/passwd.
pub const SCRIPT_USER: Rule = Rule {
    what: "scriptUser",
    targets: &[Target::Keepalived],
    chars: |c| (c == ':').then_some("separates the fields of /etc/passwd, so no user name has it"),
    shape: not_empty,
    help: "use an existing system user such as keepalived_script",
};

/// `stats.user`: in haproxy's environment file, then `stats auth "${USER}:${PASSWORD}"`.
pub const STATS_USER: Rule = Rule {
    what: "stats user",
    targets: &[Target::EnvFile],
    chars: |c| {
        (c == ':').then_some(
            "separates user and password in HAProxy's `stats auth user:password` (and in HTTP basic auth)",
        )
    },
    shape: not_empty,
    help: "use a plain user name such as admin",
};

/// The stats password, read from `stats.passwordFile` into haproxy's environment file.
/// `stats auth` splits at the first ':', so the password may hold one.
pub const STATS_PASSWORD: Rule = Rule {
    what: "stats password",
    targets: &[Target::EnvFile],
    chars: no_chars,
    shape: not_empty,
    help: "delete the file and hakube generates a new password, or write one without those characters",
};

/// `etcd.dataDir`: `ETCD_DATA_DIR=` in /etc/etcd/etcd.env (and kubeadm's etcd.local.dataDir).
pub const DATA_DIR: Rule = Rule::path(
    "dataDir",
    &[Target::EnvFile],
    "use an absolute path such as /var/lib/etcd",
);

/// `etcd.binary`: the program of `ExecStart=` in etcd.service.
pub const BINARY: Rule = Rule::path(
    "binary",
    &[Target::SystemdUnit],
    "use an absolute path such as /usr/local/bin/etcd",
);

/// `kubernetes.criSocket`: nodeRegistration.criSocket in every kubeadm file.
pub const CRI_SOCKET: Rule = Rule {
    what: "criSocket",
    targets: &[Target::KubeadmJoin],
    chars: no_chars,
    shape: |s| match s.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => None,
        _ => Some("is not a unix:// URL of an absolute path".into()),
    },
    help: "use the runtime's socket as a URL, for example unix:///var/run/containerd/containerd.sock",
};

/// `kubernetes.clusterName`: the cluster's name in every kubeconfig kubeadm writes, and
/// kube-controller-manager's `--cluster-name`.
pub const CLUSTER_NAME: Rule = Rule {
    what: "clusterName",
    targets: &[],
    chars: no_chars,
    shape: |s| {
        (!super::validate::is_dns_name(s))
            .then(|| "is not a DNS name (letters, digits, '-' and '.')".into())
    },
    help: "use a name such as ha-cluster, or leave it out to use metadata.name",
};

/// An `apiServerExtraArgs` key: kubeadm writes `--KEY=VALUE` into the API server's command.
pub const EXTRA_ARG_KEY: Rule = Rule {
    what: "argument",
    targets: &[],
    chars: |c| match c {
        '=' => Some(
            "separates the flag from its value in --KEY=VALUE: the rest would become the value",
        ),
        c if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' => None,
        _ => Some("is not part of any kube-apiserver flag name"),
    },
    shape: |s| {
        if s.is_empty() {
            Some("is empty".into())
        } else if s.starts_with('-') {
            Some("starts with '-'; kubeadm adds the leading --".into())
        } else {
            None
        }
    },
    help: "write the flag name without its leading --, for example audit-log-maxage",
};

/// The value of a path-valued `apiServerExtraArgs` argument: hakube mounts it into the API
/// server's static pod.
pub const AUDIT_POLICY_FILE: Rule = Rule::path(
    "audit-policy-file",
    &[],
    "use an absolute path on the control planes, or leave it out for hakube's default policy",
);

/// `audit-log-path`: an absolute path (hakube mounts its folder), or `-` for standard output.
pub const AUDIT_LOG_PATH: Rule = Rule {
    what: "audit-log-path",
    targets: &[],
    chars: no_chars,
    shape: |s| match s {
        "-" => None,
        s if s.rfind('/') == Some(0) => Some(
            "is a file in /, and hakube mounts the log's folder into the API server's pod".into(),
        ),
        s => absolute_path(s),
    },
    help: "use an absolute path such as /var/log/kubernetes/audit/audit.log, or - for standard output",
};

/// Apply the rule of every string field of the spec that reaches a rendered file.
pub fn check_document(doc: &Document, d: &mut Diagnostics) {
    NAME.apply(d, "metadata.name", &doc.metadata.name);
    let s = &doc.spec;
    for (i, h) in s.hosts.iter().enumerate() {
        NAME.apply(d, &format!("spec.hosts[{i}].name"), &h.name);
        if let Some(ifc) = &h.interface {
            INTERFACE.apply(d, &format!("spec.hosts[{i}].interface"), ifc);
        }
    }
    let v = &s.load_balancer.vrrp;
    let lb = "spec.loadBalancer";
    if let Some(p) = &v.auth_pass {
        AUTH_PASS.apply(d, &format!("{lb}.vrrp.authPass"), p);
    }
    if let Some(u) = &v.script_user {
        SCRIPT_USER.apply(d, &format!("{lb}.vrrp.scriptUser"), u);
    }
    if let Some(u) = &s.load_balancer.stats.user {
        STATS_USER.apply(d, &format!("{lb}.stats.user"), u);
    }
    if let Some(p) = &s.etcd.data_dir {
        DATA_DIR.apply(d, "spec.etcd.dataDir", p);
    }
    if let Some(p) = &s.etcd.binary {
        BINARY.apply(d, "spec.etcd.binary", p);
    }
    let k = &s.kubernetes;
    if let Some(p) = &k.cri_socket {
        CRI_SOCKET.apply(d, "spec.kubernetes.criSocket", p);
    }
    if let Some(n) = &k.cluster_name {
        CLUSTER_NAME.apply(d, "spec.kubernetes.clusterName", n);
    }
    for (key, value) in &k.api_server_extra_args {
        let path = format!("spec.kubernetes.apiServerExtraArgs.{key}");
        EXTRA_ARG_KEY.apply(d, &path, key);
        match key.as_str() {
            "audit-policy-file" => AUDIT_POLICY_FILE.apply(d, &path, value),
            "audit-log-path" => AUDIT_LOG_PATH.apply(d, &path, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_refuses_what_it_would_read_differently() {
        let cases = [
            (Target::Haproxy, "a#b", '#', "would read only \"a\""),
            (Target::Haproxy, "a b", ' ', "separates words"),
            (Target::Haproxy, "${X}", '$', "environment variable"),
            (Target::Keepalived, "ab!c", '!', "would read only \"ab\""),
            (Target::Keepalived, "a{", '{', "block"),
            (Target::Keepalived, "a\"b", '"', "quote"),
            (Target::EnvFile, "a;b", ';', "shell syntax"),
            (Target::EnvFile, "~x", '~', "home directory"),
            (Target::EnvFile, "a\nB=c", '\n', "new line"),
            (Target::SystemdUnit, "/a%h", '%', "specifier"),
            (Target::SystemdUnit, "/a\\b", '\\', "escapes"),
            (
                Target::KubeadmJoin,
                "/x${HAKUBE_BOOTSTRAP_TOKEN}",
                '$',
                "placeholder",
            ),
        ];
        for (t, s, c, why) in cases {
            let r = word_for(t, s).expect_err(s);
            assert_eq!(r.ch, c, "{s}");
            assert!(r.why.contains(why), "{s}: {}", r.why);
        }
        for (t, s) in [
            (Target::EnvFile, "p#ss:w=rd,1"),
            (Target::Keepalived, "p;ss@x"),
            (Target::SystemdUnit, "/usr/local/bin/etcd-3.5+x"),
            (Target::KubeadmJoin, "any text at all \"'\\"),
        ] {
            assert_eq!(word_for(t, s), Ok(()), "{s}");
        }
    }

    #[test]
    fn rules_name_the_character_and_its_position() {
        let e = INTERFACE.check("eth0#1").unwrap_err();
        assert!(
            e.starts_with("'#' at character 5 starts a comment in keepalived.conf"),
            "{e}"
        );
        let e = INTERFACE.check("veth0@if3").unwrap_err();
        assert!(e.contains("'@' at character 6"), "{e}");
        assert!(INTERFACE.check("enp0s31f6.100").is_ok());
        assert!(INTERFACE.check("a-very-long-name").is_err());
        let e = STATS_USER.check("ad:min").unwrap_err();
        assert!(e.contains("stats auth"), "{e}");
        assert!(STATS_PASSWORD.check("pa:ss#word").is_ok());
        assert!(BINARY.check("etcd").is_err());
        for p in [
            "/usr/bin/",
            "/usr//bin/etcd",
            "/usr/./etcd",
            "/a/../etcd",
            "/",
        ] {
            assert!(BINARY.check(p).is_err(), "{p}");
        }
        assert!(AUTH_PASS.check("pässwörd").is_err());
        assert!(AUDIT_LOG_PATH.check("-").is_ok());
        assert!(
            EXTRA_ARG_KEY
                .check("a=b")
                .unwrap_err()
                .contains("separates")
        );
        assert!(
            !INTERFACE
                .allowed_punctuation()
                .contains(['#', '!', '/', ':'])
        );
        assert!(STATS_PASSWORD.allowed_punctuation().contains(['#', ':']));
    }
}
