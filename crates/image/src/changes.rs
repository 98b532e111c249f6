//! Dockerfile instructions applied to an image's run config: the
//! `changes` of `docker commit -c` and `docker import -c`. Docker accepts
//! CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL,
//! USER, VOLUME and WORKDIR there, with a Dockerfile's syntax (parsed by
//! `parse-dockerfile`), and refuses the rest by name.

use std::time::Duration;

use parse_dockerfile::{Command, HealthcheckArguments, Instruction, JsonOrStringArray};
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadChange {
    #[error("{0} is not a valid change command")]
    NotAllowed(String),
    #[error("dockerfile parse error: {0}")]
    Syntax(String),
    #[error("{instruction}: {detail}")]
    Argument { instruction: &'static str, detail: String },
}

fn bad(instruction: &'static str, detail: impl Into<String>) -> BadChange {
    BadChange::Argument {
        instruction,
        detail: detail.into(),
    }
}

/// Applies `changes` (one instruction each, as the API sends them) to an
/// image's run config (Docker's `config` object: `Cmd`, `Env`, ...).
pub fn apply(config: &mut Map<String, Value>, changes: &[String]) -> Result<(), BadChange> {
    let changes: Vec<&str> = changes.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).collect();
    if changes.is_empty() {
        return Ok(());
    }
    // The parser wants a stage; the changes are the body of one.
    let text = format!("FROM scratch\n{}\n", changes.join("\n"));
    let mut cmd_set = false;
    for instruction in parse_dockerfile::parse_iter(&text).map_err(|e| BadChange::Syntax(e.to_string()))? {
        let instruction = instruction.map_err(|e| BadChange::Syntax(e.to_string()))?;
        match instruction {
            Instruction::From(_) => {}
            Instruction::Cmd(cmd) => {
                config.insert("Cmd".into(), command("CMD", &cmd.arguments)?);
                cmd_set = true;
            }
            Instruction::Entrypoint(entrypoint) => {
                config.insert("Entrypoint".into(), command("ENTRYPOINT", &entrypoint.arguments)?);
                // As in a build: a new entrypoint drops the old command unless one was given.
                if !cmd_set {
                    config.insert("Cmd".into(), Value::Null);
                }
            }
            Instruction::Env(env) => {
                for (key, value) in pairs("ENV", &env.arguments.value)? {
                    set_env(config, &key, &value);
                }
            }
            Instruction::Label(label) => {
                let labels = object(config, "Labels");
                for (key, value) in pairs("LABEL", &label.arguments.value)? {
                    labels.insert(key, Value::String(value));
                }
            }
            Instruction::Expose(expose) => {
                for port in &expose.arguments {
                    for port in ports(&port.value)? {
                        object(config, "ExposedPorts").insert(port, json!({}));
                    }
                }
            }
            Instruction::Volume(volume) => {
                let paths: Vec<String> = match &volume.arguments {
                    JsonOrStringArray::Json(list) => list.value.iter().map(|s| s.value.to_string()).collect(),
                    JsonOrStringArray::String(list) => list.iter().map(|s| s.value.to_string()).collect(),
                };
                for path in paths {
                    if path.is_empty() {
                        return Err(bad("VOLUME", "a volume path cannot be empty"));
                    }
                    object(config, "Volumes").insert(path, json!({}));
                }
            }
            Instruction::User(user) => {
                config.insert("User".into(), Value::String(user.arguments.value.to_string()));
            }
            Instruction::Workdir(workdir) => {
                let dir = workdir.arguments.value.to_string();
                let current = config.get("WorkingDir").and_then(Value::as_str).unwrap_or("/");
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", current.trim_end_matches('/'))
                };
                config.insert("WorkingDir".into(), Value::String(joined));
            }
            Instruction::Stopsignal(signal) => {
                config.insert("StopSignal".into(), Value::String(signal.arguments.value.to_string()));
            }
            Instruction::Onbuild(onbuild) => {
                let rest = text[onbuild.onbuild.span.end..].lines().next().unwrap_or("").trim();
                let list = config.entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                if let Value::Array(list) = list {
                    list.push(Value::String(rest.to_string()));
                }
            }
            Instruction::Healthcheck(healthcheck) => {
                config.insert("Healthcheck".into(), self::healthcheck(&healthcheck)?);
            }
            other => return Err(BadChange::NotAllowed(keyword(&other).into())),
        }
    }
    Ok(())
}

/// An instruction's keyword, as Docker names it in its refusal.
fn keyword(instruction: &Instruction) -> &'static str {
    match instruction {
        Instruction::Add(_) => "add",
        Instruction::Arg(_) => "arg",
        Instruction::Copy(_) => "copy",
        Instruction::From(_) => "from",
        Instruction::Maintainer(_) => "maintainer",
        Instruction::Run(_) => "run",
        Instruction::Shell(_) => "shell",
        _ => "this instruction",
    }
}

/// A command's two forms: exec (a JSON list) and shell (one string).
enum Form {
    Exec(Vec<String>),
    Shell(String),
}

fn form(instruction: &'static str, command: &Command) -> Result<Form, BadChange> {
    match command {
        Command::Exec(list) => Ok(Form::Exec(list.value.iter().map(|s| s.value.to_string()).collect())),
        Command::Shell(text) => Ok(Form::Shell(text.value.to_string())),
        _ => Err(bad(instruction, "expected a command in exec or shell form")),
    }
}

/// Exec form as given, shell form through `/bin/sh -c` (Docker's default shell).
fn command(instruction: &'static str, command: &Command) -> Result<Value, BadChange> {
    Ok(match form(instruction, command)? {
        Form::Exec(list) => json!(list),
        Form::Shell(text) => json!(["/bin/sh", "-c", text]),
    })
}

/// `KEY=value KEY2="more value"` (shell quoting), or the old one-pair form `KEY value words`.
fn pairs(instruction: &'static str, text: &str) -> Result<Vec<(String, String)>, BadChange> {
    let words = shlex::split(text).ok_or_else(|| bad(instruction, format!("unbalanced quotes in {text:?}")))?;
    let Some(first) = words.first() else {
        return Err(bad(instruction, "needs at least one argument"));
    };
    if !first.contains('=') {
        let (key, value) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad(instruction, format!("{first} needs a value")))?;
        return Ok(vec![(key.to_string(), value.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(bad(instruction, format!("{word:?}: a name cannot be empty"))),
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(bad(instruction, format!("{word:?} is not NAME=VALUE"))),
        })
        .collect()
}

fn set_env(config: &mut Map<String, Value>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    let env = config.entry("Env").or_insert_with(|| json!([]));
    if !env.is_array() {
        *env = json!([]);
    }
    if let Value::Array(list) = env {
        match list.iter_mut().find(|e| {
            e.as_str()
                .and_then(|e| e.split_once('='))
                .is_some_and(|(k, _)| k == key)
        }) {
            Some(existing) => *existing = Value::String(entry),
            None => list.push(Value::String(entry)),
        }
    }
}

/// The object under `key`, made if missing or not an object.
fn object<'a>(config: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let value = config.entry(key).or_insert_with(|| json!({}));
    if !value.is_object() {
        *value = json!({});
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("made an object just above"),
    }
}

/// `80`, `80/udp`, `8000-8002/tcp` as `ExposedPorts` keys.
fn ports(text: &str) -> Result<Vec<String>, BadChange> {
    let (range, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
        return Err(bad("EXPOSE", format!("invalid proto: {protocol}")));
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| bad("EXPOSE", format!("invalid containerPort: {p}")))
    };
    let (low, high) = match range.split_once('-') {
        Some((low, high)) => (port(low)?, port(high)?),
        None => (port(range)?, port(range)?),
    };
    if high < low {
        return Err(bad("EXPOSE", format!("invalid port range: {range}")));
    }
    Ok((low..=high).map(|p| format!("{p}/{protocol}")).collect())
}

fn healthcheck(instruction: &parse_dockerfile::HealthcheckInstruction) -> Result<Value, BadChange> {
    let test = match &instruction.arguments {
        HealthcheckArguments::None { .. } => return Ok(json!({ "Test": ["NONE"] })),
        HealthcheckArguments::Cmd { arguments, .. } => match form("HEALTHCHECK", arguments)? {
            Form::Exec(list) => json!(["CMD"].into_iter().map(String::from).chain(list).collect::<Vec<_>>()),
            Form::Shell(text) => json!(["CMD-SHELL", text]),
        },
        _ => return Err(bad("HEALTHCHECK", "expected CMD or NONE")),
    };
    let mut check = json!({ "Test": test });
    for flag in &instruction.options {
        let name = flag.name.value.as_ref();
        let value = flag.value.as_ref().map(|v| v.value.as_ref()).unwrap_or("");
        let key = match name {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let retries: u32 = value
                    .parse()
                    .map_err(|_| bad("HEALTHCHECK", format!("--retries must be a number, not {value:?}")))?;
                check["Retries"] = json!(retries);
                continue;
            }
            _ => return Err(bad("HEALTHCHECK", format!("unknown flag: --{name}"))),
        };
        check[key] = json!(nanoseconds(name, value)?);
    }
    Ok(check)
}

/// A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds, as Docker stores it.
fn nanoseconds(flag: &str, text: &str) -> Result<u64, BadChange> {
    let duration: Duration =
        humantime::parse_duration(text).map_err(|e| bad("HEALTHCHECK", format!("--{flag} {text:?}: {e}")))?;
    if duration != Duration::ZERO && duration < Duration::from_millis(1) {
        return Err(bad("HEALTHCHECK", format!("--{flag} cannot be less than 1ms")));
    }
    u64::try_from(duration.as_nanos()).map_err(|_| bad("HEALTHCHECK", format!("--{flag} {text:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(base: Value, changes: &[&str]) -> Result<Value, BadChange> {
        let mut config = base.as_object().cloned().unwrap();
        apply(&mut config, &changes.iter().map(|c| c.to_string()).collect::<Vec<_>>())?;
        Ok(Value::Object(config))
    }

    #[test]
    fn each_allowed_instruction_sets_its_field() {
        let got = applied(
            json!({"Env": ["PATH=/bin", "A=old"], "Cmd": ["sh"], "WorkingDir": "/srv"}),
            &[
                "CMD [\"httpd\", \"-f\"]",
                "ENV A=new B=\"two words\" C=x\\ y",
                "LABEL version=1.0 \"com.example.team\"=web",
                "EXPOSE 80 53/udp 8000-8001",
                "VOLUME /data",
                "VOLUME [\"/cache\"]",
                "USER app:app",
                "WORKDIR www",
                "STOPSIGNAL SIGINT",
                "ONBUILD RUN echo built",
                "HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD wget -q -O- localhost",
            ],
        )
        .unwrap();
        assert_eq!(got["Cmd"], json!(["httpd", "-f"]));
        assert_eq!(got["Env"], json!(["PATH=/bin", "A=new", "B=two words", "C=x y"]));
        assert_eq!(got["Labels"], json!({"version": "1.0", "com.example.team": "web"}));
        assert_eq!(
            got["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}})
        );
        assert_eq!(got["Volumes"], json!({"/data": {}, "/cache": {}}));
        assert_eq!(got["User"], "app:app");
        assert_eq!(got["WorkingDir"], "/srv/www");
        assert_eq!(got["StopSignal"], "SIGINT");
        assert_eq!(got["OnBuild"], json!(["RUN echo built"]));
        assert_eq!(
            got["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "wget -q -O- localhost"], "Interval": 30_000_000_000u64,
                   "Timeout": 90_000_000_000u64, "Retries": 3})
        );
    }

    #[test]
    fn shell_forms_old_env_and_entrypoint_follow_docker() {
        let got = applied(
            json!({"Cmd": ["sh"]}),
            &["ENTRYPOINT exec top -b", "ENV GREETING hello world"],
        )
        .unwrap();
        assert_eq!(got["Entrypoint"], json!(["/bin/sh", "-c", "exec top -b"]));
        assert_eq!(got["Cmd"], Value::Null, "a new entrypoint drops the image's command");
        assert_eq!(got["Env"], json!(["GREETING=hello world"]));
        let got = applied(json!({}), &["CMD [\"x\"]", "ENTRYPOINT [\"/e\"]"]).unwrap();
        assert_eq!(got["Cmd"], json!(["x"]), "a command given beside it stays");
        let got = applied(json!({}), &["HEALTHCHECK NONE"]).unwrap();
        assert_eq!(got["Healthcheck"], json!({"Test": ["NONE"]}));
    }

    #[test]
    fn other_instructions_and_bad_arguments_are_refused() {
        assert_eq!(
            applied(json!({}), &["RUN echo hi"]),
            Err(BadChange::NotAllowed("run".into()))
        );
        assert_eq!(
            applied(json!({}), &["COPY a b"]),
            Err(BadChange::NotAllowed("copy".into()))
        );
        assert!(applied(json!({}), &["EXPOSE 99999"]).is_err());
        assert!(applied(json!({}), &["EXPOSE 80/icmp"]).is_err());
        assert!(applied(json!({}), &["ENV A=\"open"]).is_err());
        assert!(applied(json!({}), &["HEALTHCHECK --interval=soon CMD true"]).is_err());
        assert!(applied(json!({}), &["HEALTHCHECK --bogus=1 CMD true"]).is_err());
        assert!(matches!(
            applied(json!({}), &["NOTACOMMAND x"]),
            Err(BadChange::Syntax(_))
        ));
        assert_eq!(applied(json!({"User": "a"}), &[]).unwrap(), json!({"User": "a"}));
    }
}
