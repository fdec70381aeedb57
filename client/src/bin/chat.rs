//! `chat`: the command-line chat client for people.
//!
//! One profile file is one device (see `chat_client::profile`). Typical first steps:
//!   chat --profile alice.json register alice
//!   chat --profile bob.json register bob
//!   chat --profile alice.json send bob "hello"
//!   chat --profile bob.json tail

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chat_client::profile::Profile;
use chat_client::{ChatClient, Device, DeviceEvent, DeviceOptions};
use chat_proto::chat_v1 as pb;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat", version, about = "Chat from the command line")]
struct Cli {
    /// The profile (one device): token, servers, cursors.
    #[arg(long, env = "CHAT_PROFILE")]
    profile: Option<PathBuf>,
    /// Servers to use (host:port, comma-separated); saved in the profile at register.
    #[arg(long, env = "CHAT_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// Dial the servers through TLS, checking their certificate against this CA.
    #[arg(long, env = "CHAT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Dial the servers through TLS, checking their certificate against the system's CAs.
    #[arg(long, env = "CHAT_TLS")]
    tls: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account for HANDLE with this device as its first one.
    Register {
        handle: String,
        #[arg(long, default_value_t = 1)]
        device: u64,
    },
    /// Add another device to this account; writes its profile to NEW_PROFILE.
    Link {
        new_profile: PathBuf,
        #[arg(long)]
        device: u64,
    },
    /// Revoke one of this account's devices.
    Revoke { device: u64 },
    /// Send TEXT to a user (by handle: a direct chat) or to a chat (`#<chat id>`); with
    /// `--file`, the file goes as media (uploaded beside the log) and TEXT is its caption.
    Send {
        to: String,
        text: Vec<String>,
        /// Attach this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Its MIME type [default: from the file's extension].
        #[arg(long, requires = "file")]
        mime: Option<String>,
    },
    /// Download the media of message SEQ of a chat (a handle or `#<chat id>`), checked against
    /// its sha256, into OUT (or `chat-<chat>-<seq>[-<n>].<ext>` in this directory).
    Get {
        to: String,
        seq: u64,
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Tell a chat's other members you are typing (they see it for 6 s), or `--stop`.
    Typing {
        to: String,
        #[arg(long)]
        stop: bool,
    },
    /// Follow chats live (all of them, or one), resuming from the profile's cursors.
    Tail {
        /// Only print this chat (`#<chat id>` or a handle).
        to: Option<String>,
        /// Stop after printing N messages.
        #[arg(long)]
        count: Option<usize>,
        /// Mark printed messages read.
        #[arg(long)]
        read: bool,
    },
    /// A chat's messages (a handle or `#<chat id>`).
    History {
        to: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// This account's chats.
    Chats,
    /// Chats by latest activity, with unread counts and ticks on your last messages.
    Inbox,
    /// Groups: create, add, remove.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Whether users are online; `--hide` / `--show` your own presence.
    Presence {
        handles: Vec<String>,
        #[arg(long, conflicts_with = "show")]
        hide: bool,
        #[arg(long)]
        show: bool,
    },
    /// Delete message SEQ of a chat (a handle or `#<chat id>`) for everyone, or with `--for-me`
    /// only from your own history and devices.
    Delete {
        to: String,
        seq: u64,
        #[arg(long)]
        for_me: bool,
    },
    /// Delete this account: it leaves every chat, every device is revoked, and the handle
    /// can be registered again after a grace period. Give the handle to confirm.
    DeleteAccount {
        #[arg(long)]
        confirm: String,
    },
    /// Block a user: their messages to you are refused (`--undo` unblocks).
    Block {
        handle: String,
        #[arg(long)]
        undo: bool,
    },
    /// Make a chat's messages disappear after SECONDS (0: off); a handle or `#<chat id>`.
    Disappear { to: String, seconds: u32 },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group named NAME with the given members (you are its admin).
    Create { name: String, members: Vec<String> },
    /// Add members to a group (`#<chat id>`).
    Add { chat: String, members: Vec<String> },
    /// Remove members from a group (`#<chat id>`).
    Remove { chat: String, members: Vec<String> },
    /// Leave a group.
    Leave { chat: String },
    /// Make members admins.
    Promote { chat: String, members: Vec<String> },
    /// Make admins plain members.
    Demote { chat: String, members: Vec<String> },
    /// Rename a group or set its description.
    Set {
        chat: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let tls = cli.tls || cli.tls_ca.is_some();
    if let Err(e) = run(cli).await {
        let error = format!("{e:#}");
        eprintln!("chat: {error}");
        if let Some(hint) = tls_hint(&error, tls) {
            eprintln!("chat: hint: {hint}");
        }
        std::process::exit(1);
    }
}

/// What to try when an error looks like TLS on one side only, or a CA the client does not
/// trust. `tls`: whether this client dialled with TLS.
fn tls_hint(error: &str, tls: bool) -> Option<&'static str> {
    let has = |words: &[&str]| words.iter().any(|w| error.contains(w));
    if !tls
        && has(&[
            "frame with invalid size",
            "connection closed",
            "broken pipe",
        ])
    {
        return Some(
            "the server may have TLS on: give --tls (a certificate of a public CA) or --tls-ca FILE (the cluster's CA)",
        );
    }
    if tls && has(&["InvalidContentType", "corrupt message"]) {
        return Some("the server does not speak TLS on this address: leave out --tls and --tls-ca");
    }
    if tls && has(&["UnknownIssuer", "invalid peer certificate"]) {
        return Some(
            "the server's certificate is not signed by the CA this client trusts: give the cluster's CA with --tls-ca FILE",
        );
    }
    None
}

/// How this process dials the servers (plaintext, or TLS with `--tls-ca` / `--tls`).
static DIALER: std::sync::OnceLock<chat_tls::Dialer> = std::sync::OnceLock::new();
/// The TLS config behind `DIALER` when TLS is on: media URLs are checked against it too.
static TLS_CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
    std::sync::OnceLock::new();

fn dialer() -> &'static chat_tls::Dialer {
    DIALER.get_or_init(chat_tls::Dialer::plain)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.tls || cli.tls_ca.is_some() {
        let config = chat_tls::client_config(cli.tls_ca.as_deref(), None)?;
        let _ = TLS_CONFIG.set(config.clone());
        let _ = DIALER.set(chat_tls::Dialer::fixed(config));
    }
    let path = cli.profile.clone().unwrap_or_else(Profile::default_path);
    if let Command::Register { handle, device } = &cli.command {
        return register(&path, servers_or_default(cli.server), handle, *device).await;
    }
    let mut profile = Profile::load(&path)?;
    if !cli.server.is_empty() {
        profile.servers = cli.server;
    }
    let mut client = client_for(&profile).await?;
    match cli.command {
        Command::Register { .. } => unreachable!("handled above"),
        Command::Link {
            new_profile,
            device,
        } => {
            let reply = client.link_device(device).await?;
            let linked = Profile {
                device_id: reply.device_id,
                token: reply.token,
                cursors: Default::default(),
                ..profile.clone()
            };
            linked.save(&new_profile)?;
            println!(
                "linked device {} of {}; its profile is {}",
                reply.device_id,
                profile.handle,
                new_profile.display()
            );
        }
        Command::Revoke { device } => {
            client.revoke_device(device).await?;
            println!("revoked device {device} of {}", profile.handle);
        }
        Command::Send {
            to,
            text,
            file,
            mime,
        } => {
            if text.is_empty() && file.is_none() {
                bail!("nothing to send");
            }
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            profile.save(&path)?;
            let media = match &file {
                Some(file) => vec![upload_file(&mut client, file, mime.as_deref()).await?],
                None => Vec::new(),
            };
            let device = Device::start(device_options(&profile));
            let ack = tokio::time::timeout(
                Duration::from_secs(30),
                device.send_media(chat, text.join(" ").into_bytes(), media),
            )
            .await
            .context("no acknowledgement within 30 s")??;
            println!(
                "sent to chat #{} as seq {} (offset {})",
                ack.chat_id, ack.seq, ack.offset
            );
        }
        Command::Typing { to, stop } => {
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            profile.save(&path)?;
            let mut device = Device::start(device_options(&profile));
            let synced = async {
                while let Some(event) = device.next_event().await {
                    if matches!(event, DeviceEvent::Synced) {
                        return true;
                    }
                }
                false
            };
            if !tokio::time::timeout(Duration::from_secs(30), synced)
                .await
                .unwrap_or(false)
            {
                bail!("no stream to the server within 30 s");
            }
            device.typing(chat, !stop).await;
            // The frame is written by the device's task: give it time to leave.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Command::Tail { to, count, read } => {
            // Learn who is who, so messages print with handles.
            for c in client.list_chats().await? {
                profile.learn(&c.members, &c.member_handles);
            }
            let only = match to {
                Some(to) => Some(resolve_chat(&mut client, &mut profile, &to).await?),
                None => None,
            };
            tail(&path, &mut profile, only, count, read).await?;
        }
        Command::History { to, limit } => {
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            // The newest page: below a bound past any seq.
            let page = client.history(chat, 0, u64::MAX, limit.max(1)).await?;
            for m in &page.messages {
                print_message(&profile, m);
            }
            println!("({} of {} messages)", page.messages.len(), page.last_seq);
        }
        Command::Chats => {
            for c in client.list_chats().await? {
                profile.learn(&c.members, &c.member_handles);
                let names: Vec<String> = c.members.iter().map(|&u| profile.name_of(u)).collect();
                let kind = if c.kind == pb::ChatKind::Group as i32 {
                    format!("group {:?}", c.name)
                } else {
                    "direct".to_string()
                };
                println!(
                    "#{} {kind} [{}] last seq {}",
                    c.chat_id,
                    names.join(", "),
                    c.last_seq
                );
            }
            profile.save(&path)?;
        }
        Command::Inbox => {
            for c in client.inbox().await? {
                let title = if c.kind == pb::ChatKind::Group as i32 {
                    c.name.clone()
                } else {
                    format!("#{}", c.chat_id)
                };
                let ticks = if c.ticks_read >= c.last_seq && c.last_seq > 0 {
                    "read by all"
                } else if c.ticks_delivered >= c.last_seq && c.last_seq > 0 {
                    "delivered to all"
                } else {
                    ""
                };
                println!(
                    "#{} {title}: {} unread of {} {ticks}",
                    c.chat_id, c.unread, c.last_seq
                );
            }
        }
        Command::Group(g) => {
            let info = match g {
                GroupCommand::Create { name, members } => {
                    let request_id = chat_client::device::new_client_msg_id();
                    client.create_group(&request_id, &name, &members).await?
                }
                GroupCommand::Add { chat, members } => {
                    client
                        .change_members(chat_id(&chat)?, &members, &[])
                        .await?
                }
                GroupCommand::Remove { chat, members } => {
                    client
                        .change_members(chat_id(&chat)?, &[], &members)
                        .await?
                }
                GroupCommand::Leave { chat } => {
                    client
                        .change_members(chat_id(&chat)?, &[], &[profile.handle.clone()])
                        .await?
                }
                GroupCommand::Promote { chat, members } => {
                    let change = pb::ChangeMembersRequest {
                        chat_id: chat_id(&chat)?,
                        promote_handles: members,
                        ..Default::default()
                    };
                    client.change_group(change).await?
                }
                GroupCommand::Demote { chat, members } => {
                    let change = pb::ChangeMembersRequest {
                        chat_id: chat_id(&chat)?,
                        demote_handles: members,
                        ..Default::default()
                    };
                    client.change_group(change).await?
                }
                GroupCommand::Set {
                    chat,
                    name,
                    description,
                } => {
                    let update = pb::UpdateChatRequest {
                        chat_id: chat_id(&chat)?,
                        name,
                        description,
                        ..Default::default()
                    };
                    client.update_chat(update).await?
                }
            };
            profile.learn(&info.members, &info.member_handles);
            profile.save(&path)?;
            let names: Vec<String> = info.members.iter().map(|&u| profile.name_of(u)).collect();
            println!(
                "group #{} {:?}: {}",
                info.chat_id,
                info.name,
                names.join(", ")
            );
            let admins: Vec<String> = info.admins.iter().map(|&u| profile.name_of(u)).collect();
            println!("admins: {}", admins.join(", "));
            if !info.description.is_empty() {
                println!("description: {}", info.description);
            }
        }
        Command::Get { to, seq, out } => {
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            profile.save(&path)?;
            get_media(&mut client, chat, seq, out).await?;
        }
        Command::Delete {
            to,
            seq,
            for_me: true,
        } => {
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            profile.save(&path)?;
            match client.delete_for_me(chat, vec![seq]).await? {
                0 => println!("#{chat} {seq} was already deleted for you"),
                _ => println!("deleted #{chat} {seq} for you"),
            }
        }
        Command::Delete { to, seq, .. } => {
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            profile.save(&path)?;
            let ack = client.delete_message(chat, seq).await?;
            println!("deleted #{chat} {seq} for everyone (seq {})", ack.seq);
        }
        Command::DeleteAccount { confirm } => {
            if confirm != profile.handle {
                bail!(
                    "--confirm {confirm:?} is not this profile's handle ({:?})",
                    profile.handle
                );
            }
            let release_at = client.delete_account(&confirm).await?;
            let days = release_at.saturating_sub(now_ms()) as f64 / 86_400_000.0;
            println!(
                "deleted the account {confirm}: its devices are revoked; the handle can be \
                 registered again in {days:.1} days"
            );
        }
        Command::Block { handle, undo } => {
            let reply = client.block_user(&handle, !undo).await?;
            match reply.blocked {
                true => println!("blocked {handle}: their messages to you are refused"),
                false => println!("unblocked {handle}"),
            }
        }
        Command::Disappear { to, seconds } => {
            let chat = resolve_chat(&mut client, &mut profile, &to).await?;
            profile.save(&path)?;
            let update = pb::UpdateChatRequest {
                chat_id: chat,
                disappear_after_secs: Some(seconds),
                ..Default::default()
            };
            let info = client.update_chat(update).await?;
            match info.disappear_after_secs {
                0 => println!("messages in #{chat} no longer disappear"),
                s => println!("messages in #{chat} disappear after {s} s"),
            }
        }
        Command::Presence {
            handles,
            hide,
            show,
        } => {
            if hide || show {
                let hidden = client.set_presence_hidden(hide).await?;
                println!(
                    "your presence is {}",
                    if hidden { "hidden" } else { "shown" }
                );
            }
            for p in client.presence(&handles).await? {
                let state = if p.online {
                    "online".to_string()
                } else if p.last_seen_ms > 0 {
                    format!(
                        "last seen {} ms ago",
                        now_ms().saturating_sub(p.last_seen_ms)
                    )
                } else {
                    "offline".to_string()
                };
                println!("{}: {state}", p.handle);
            }
        }
    }
    Ok(())
}

fn servers_or_default(servers: Vec<String>) -> Vec<String> {
    if servers.is_empty() {
        vec!["127.0.0.1:7400".to_string()]
    } else {
        servers
    }
}

async fn client_for(profile: &Profile) -> anyhow::Result<ChatClient> {
    let mut last = None;
    for server in &profile.servers {
        match ChatClient::connect_via(dialer(), server).await {
            Ok(c) => return Ok(c.with_token(&profile.token)?),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => bail!("the profile names no server"),
    }
}

async fn register(
    path: &Path,
    servers: Vec<String>,
    handle: &str,
    device: u64,
) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already holds a profile; pick another with --profile",
            path.display()
        );
    }
    let mut client = ChatClient::connect_via(dialer(), &servers[0]).await?;
    let reply = client.register(handle, device).await?;
    let profile = Profile {
        servers,
        handle: handle.to_string(),
        user_id: reply.user_id,
        device_id: reply.device_id,
        token: reply.token,
        ..Profile::default()
    };
    profile.save(path)?;
    println!(
        "registered {handle} (user {}), device {}; profile saved to {}",
        reply.user_id,
        reply.device_id,
        path.display()
    );
    Ok(())
}

fn chat_id(s: &str) -> anyhow::Result<u64> {
    s.trim_start_matches('#')
        .parse()
        .with_context(|| format!("{s:?} is not a chat id (#<number>)"))
}

/// `#<id>` is a chat; anything else is a handle, whose direct chat is created if needed.
async fn resolve_chat(
    client: &mut ChatClient,
    profile: &mut Profile,
    to: &str,
) -> anyhow::Result<u64> {
    if to.starts_with('#') {
        return chat_id(to);
    }
    let info = client.create_direct(to).await?;
    profile.learn(&info.members, &info.member_handles);
    Ok(info.chat_id)
}

fn device_options(profile: &Profile) -> DeviceOptions {
    let mut options = DeviceOptions::new(profile.servers.clone(), &profile.token);
    options.dialer = dialer().clone();
    options.cursors = profile.cursors.clone();
    options
}

async fn tail(
    path: &Path,
    profile: &mut Profile,
    only: Option<u64>,
    count: Option<usize>,
    read: bool,
) -> anyhow::Result<()> {
    let mut device = Device::start(device_options(profile));
    device.subscribe_presence().await;
    let mut printed = 0;
    let mut save = tokio::time::interval(Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            event = device.next_event() => event,
            _ = save.tick() => {
                profile.cursors = device.cursors();
                profile.save(path)?;
                continue;
            }
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(event) = event else { break };
        match event {
            DeviceEvent::Connected { addr, node_id } => {
                eprintln!("connected to {addr} (node {node_id})")
            }
            DeviceEvent::Synced => eprintln!("-- up to date; following --"),
            DeviceEvent::Message(m) => {
                if only.is_some_and(|c| c != m.chat_id) {
                    continue;
                }
                print_message(profile, &m);
                if read {
                    device.read(m.chat_id, m.seq).await;
                }
                printed += 1;
                if count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
            DeviceEvent::Receipt(r) if r.user_id != profile.user_id => eprintln!(
                "#{} {} has received up to {} and read up to {}",
                r.chat_id,
                profile.name_of(r.user_id),
                r.delivered_up_to,
                r.read_up_to
            ),
            DeviceEvent::Receipt(_) => {}
            DeviceEvent::Ticks(t) => eprintln!(
                "#{} your messages: delivered to all up to {}, read by all up to {}",
                t.chat_id, t.delivered_up_to, t.read_up_to
            ),
            DeviceEvent::ChatUpdate(u) if u.member => eprintln!("joined chat #{}", u.chat_id),
            DeviceEvent::ChatUpdate(u) => eprintln!("left chat #{}", u.chat_id),
            DeviceEvent::Presence(p) if p.online => {
                eprintln!("{} is online", profile.name_of(p.user_id))
            }
            DeviceEvent::Presence(p) => eprintln!(
                "{} went offline (last seen {} ms ago)",
                profile.name_of(p.user_id),
                now_ms().saturating_sub(p.last_seen_ms)
            ),
            DeviceEvent::Typing(t) if t.typing => {
                eprintln!("#{} {} is typing…", t.chat_id, profile.name_of(t.user_id))
            }
            DeviceEvent::Typing(t) => {
                eprintln!(
                    "#{} {} stopped typing",
                    t.chat_id,
                    profile.name_of(t.user_id)
                )
            }
            DeviceEvent::Hidden(h) => eprintln!(
                "#{} deleted for you: {}",
                h.chat_id,
                h.seqs
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DeviceEvent::Error(e) => eprintln!("server refused a frame: {}", e.message),
            DeviceEvent::Disconnected(status) => {
                eprintln!("disconnected: {}; reconnecting", status.message())
            }
        }
    }
    // Let the last acks reach the server before the stream closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    profile.cursors = device.cursors();
    profile.save(path)
}

fn print_message(profile: &Profile, m: &pb::Message) {
    let name = profile.name_of(m.sender_user);
    if m.deletes_seq != 0 {
        println!(
            "#{} {:>4} {name} deleted message {}",
            m.chat_id, m.seq, m.deletes_seq
        );
        return;
    }
    if m.deleted {
        println!("#{} {:>4} {name}: (deleted)", m.chat_id, m.seq);
        return;
    }
    let media: String = m
        .media
        .iter()
        .map(|r| format!(" [{} {} bytes]", r.mime, r.size))
        .collect();
    println!(
        "#{} {:>4} {}: {}{media}",
        m.chat_id,
        m.seq,
        profile.name_of(m.sender_user),
        String::from_utf8_lossy(&m.payload)
    );
}

/// The HTTP client for media URLs, trusting what the device API's connections trust.
fn media_http() -> anyhow::Result<reqwest::Client> {
    chat_client::media::http_client(TLS_CONFIG.get().cloned())
}

/// Upload `file`; the reference to send.
async fn upload_file(
    client: &mut ChatClient,
    file: &Path,
    mime: Option<&str>,
) -> anyhow::Result<pb::MediaRef> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mime = mime.unwrap_or_else(|| chat_client::media::guess_mime(&name));
    let size = bytes.len();
    let media = chat_client::media::upload(client, &media_http()?, bytes, mime).await?;
    eprintln!("uploaded {} ({size} bytes, {mime})", file.display());
    Ok(media)
}

/// Download the media of message `seq` of `chat`.
async fn get_media(
    client: &mut ChatClient,
    chat: u64,
    seq: u64,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let page = client
        .history(chat, seq.saturating_sub(1), seq + 1, 1)
        .await?;
    let Some(message) = page.messages.into_iter().find(|m| m.seq == seq) else {
        bail!("chat #{chat} has no message {seq}");
    };
    if message.deleted || message.expired {
        bail!("message {seq} of #{chat} was deleted or expired: its media are gone");
    }
    if message.media.is_empty() {
        bail!("message {seq} of #{chat} has no media");
    }
    if out.is_some() && message.media.len() > 1 {
        bail!(
            "message {seq} has {} media; leave out --out to save each",
            message.media.len()
        );
    }
    let http = media_http()?;
    for (n, media) in message.media.iter().enumerate() {
        let bytes = chat_client::media::download(client, &http, media).await?;
        let file = out.clone().unwrap_or_else(|| {
            let n = if message.media.len() > 1 {
                format!("-{}", n + 1)
            } else {
                String::new()
            };
            let ext = media
                .mime
                .rsplit('/')
                .next()
                .filter(|e| e.len() <= 8 && e.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or("bin");
            PathBuf::from(format!("chat-{chat}-{seq}{n}.{ext}"))
        });
        std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
        println!(
            "saved {} ({} bytes, {}, sha256 checked)",
            file.display(),
            bytes.len(),
            media.mime
        );
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
