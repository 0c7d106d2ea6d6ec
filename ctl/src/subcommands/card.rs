//! `fleetkeyctl card list`: smartcard readers and the cards in them.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{Card, ListCardsRequest};
use serde::Serialize;

use super::Context;
use crate::output;

/// The card commands.
#[derive(Debug, clap::Subcommand)]
pub enum CardCommand {
    List(CardList),
}

impl CardCommand {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self {
            CardCommand::List(cmd) => cmd.run(ctx).await,
        }
    }
}

/// List smartcard readers and the cards in them
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Lists the smartcard readers the daemon sees through PC/SC (pcscd), whether a \
card is in each, whether it is a PIV card, and the card's identity (its \
CHUID GUID, and its serial number where the card tells one): what a user's \
key is tied to. Anyone may run it.",
    after_long_help = "\
Examples:
  fleetkeyctl card list
  fleetkeyctl --json card list | jq -r '.cards[] | select(.piv) | .reader'"
)]
pub struct CardList {}

impl CardList {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let cards = client
            .list_cards(ListCardsRequest {
                backend: String::new(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner()
            .cards;
        if ctx.json {
            output::json(&cards_json(&cards))
        } else {
            output::data(&cards_text(&cards))
        }
    }
}

/// One reader in `card list --json`.
#[derive(Debug, Serialize)]
pub struct CardJson {
    pub reader: String,
    pub card_present: bool,
    pub piv: bool,
    pub card_id: String,
    pub serial: String,
    pub problem: String,
}

#[derive(Debug, Serialize)]
pub struct CardsJson {
    pub cards: Vec<CardJson>,
}

pub fn cards_json(cards: &[Card]) -> CardsJson {
    CardsJson {
        cards: cards
            .iter()
            .map(|c| CardJson {
                reader: c.reader.clone(),
                card_present: c.card_present,
                piv: c.piv,
                card_id: c.card_id.clone(),
                serial: c.serial.clone(),
                problem: c.problem.clone(),
            })
            .collect(),
    }
}

pub fn cards_text(cards: &[Card]) -> String {
    if cards.is_empty() {
        return "No smartcard reader is connected.".into();
    }
    let rows: Vec<Vec<String>> = cards
        .iter()
        .map(|c| {
            let card = match (c.card_present, c.piv) {
                (false, _) => "-".to_string(),
                (true, true) => "PIV".to_string(),
                (true, false) => format!("not usable: {}", c.problem),
            };
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            vec![c.reader.clone(), card, dash(&c.card_id), dash(&c.serial)]
        })
        .collect();
    output::table(&["READER", "CARD", "CARD ID", "SERIAL"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cards() -> Vec<Card> {
        vec![
            Card {
                reader: "Virtual PCD 00 00".into(),
                card_present: true,
                piv: true,
                card_id: "00ff".into(),
                serial: "12345678".into(),
                problem: String::new(),
            },
            Card {
                reader: "Virtual PCD 00 01".into(),
                ..Card::default()
            },
        ]
    }

    #[test]
    fn json_and_text() {
        assert_eq!(
            serde_json::to_value(cards_json(&cards())).unwrap(),
            json!({"cards": [
                {"reader": "Virtual PCD 00 00", "card_present": true, "piv": true,
                 "card_id": "00ff", "serial": "12345678", "problem": ""},
                {"reader": "Virtual PCD 00 01", "card_present": false, "piv": false,
                 "card_id": "", "serial": "", "problem": ""},
            ]})
        );
        let text = cards_text(&cards());
        assert!(text.contains("Virtual PCD 00 00"), "{text}");
        assert!(text.contains("12345678"), "{text}");
        assert_eq!(cards_text(&[]), "No smartcard reader is connected.");
    }
}
