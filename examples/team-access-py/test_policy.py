"""Native unit tests of the policy rules (no WebAssembly, no bindings).

Run with any Python 3.9+: `python test_policy.py` (or `python -m unittest`).
"""

import json
import os
import sys
import unittest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from team_access import (  # noqa: E402
    Allow,
    ConfigError,
    Deny,
    decide,
    display,
    key,
    parse_config,
    same,
    sha256_hex,
    visible,
)


def hashed(token):
    return "sha256:" + sha256_hex(token)


CONFIG = parse_config(
    json.dumps(
        {
            # As the README says to write them; sk-root's digest in upper case.
            "tokens": {
                hashed("sk-a"): "team-a",
                "SHA256:" + sha256_hex("sk-root").upper(): "admins",
                hashed("sk-none"): "nobody",
            },
            "teams": {
                "team-a": ["llama3.2", "qwen2.5:14b"],
                "admins": ["*"],
                "nobody": [],
            },
        }
    )
)


def auth(token):
    return [("content-type", "application/json"), ("authorization", f"Bearer {token}")]


class Names(unittest.TestCase):
    """The cases of plugins/sdk/src/names.rs, so both ports agree."""

    def test_display_forms(self):
        for name, shown in [
            ("llama3.2", "llama3.2:latest"),
            ("llama3.2:latest", "llama3.2:latest"),
            ("library/llama3.2", "llama3.2:latest"),
            ("registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest"),
            ("qwen2.5:14b", "qwen2.5:14b"),
            ("user/model:tag", "user/model:tag"),
            ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M"),
            ("myreg:5000/ns/m", "myreg:5000/ns/m:latest"),
            ("llama3.2@sha256:abc", "llama3.2:latest"),
            ("llama3.2:", "llama3.2:latest"),
            ("  llama3.2  ", "llama3.2:latest"),
        ]:
            self.assertEqual(display(name), shown, name)

    def test_same_model_many_spellings(self):
        for n in [
            "llama3.2",
            "LLAMA3.2",
            "library/llama3.2",
            "registry.ollama.ai/library/llama3.2:latest",
            "Library/Llama3.2:LATEST",
        ]:
            self.assertTrue(same(n, "llama3.2:latest"), n)
        self.assertFalse(same("llama3.2", "llama3.2:1b"))
        self.assertFalse(same("llama3.2", "user/llama3.2"))

    def test_only_ascii_is_folded(self):
        # Rust's to_ascii_lowercase leaves non-ASCII letters alone.
        self.assertEqual(key("MÖDEL"), "mÖdel:latest")


class Requests(unittest.TestCase):
    def test_no_token_is_401_with_a_challenge(self):
        for headers in [[], [("authorization", "Basic dXNlcjpwYXNz")], [("authorization", "Bearer ")]]:
            v = decide(CONFIG, "llama3.2", headers)
            self.assertEqual(v.status, 401, headers)
            self.assertIn(("www-authenticate", "Bearer"), v.headers)
            self.assertIn("missing bearer token", v.message)

    def test_unknown_token_is_401(self):
        v = decide(CONFIG, "llama3.2", auth("sk-wrong"))
        self.assertEqual(v, Deny(401, "invalid bearer token", (("www-authenticate", "Bearer"),)))

    def test_a_token_one_character_off_or_the_hash_itself_is_401(self):
        for token in ["sk-b", "sk-", "sk-aa", "Sk-a", "sk-roop", sha256_hex("sk-a"), hashed("sk-a")]:
            self.assertEqual(decide(CONFIG, "llama3.2", auth(token)).status, 401, token)
        self.assertIsInstance(decide(CONFIG, "llama3.2", auth("sk-a")), Allow)
        self.assertIsInstance(decide(CONFIG, "mistral", auth("sk-root")), Allow)

    def test_token_scheme_and_header_name_are_case_insensitive(self):
        v = decide(CONFIG, "llama3.2", [("Authorization", "bearer   sk-a ")])
        self.assertIsInstance(v, Allow)

    def test_allowed_model_is_forwarded_without_the_token(self):
        for model in ["llama3.2", "llama3.2:latest", "library/llama3.2", "LLAMA3.2", "qwen2.5:14b"]:
            v = decide(CONFIG, model, auth("sk-a"))
            self.assertEqual(v, Allow(remove_headers=("authorization",)), model)

    def test_forbidden_model_is_403_naming_team_and_model(self):
        for model in ["mistral", "llama3.2:1b", "qwen2.5", "user/llama3.2"]:
            v = decide(CONFIG, model, auth("sk-a"))
            self.assertIsInstance(v, Deny, model)
            self.assertEqual(v.status, 403)
            self.assertEqual(v.message, f'team "team-a" may not use model "{model}"')
            self.assertEqual(v.headers, ())

    def test_wildcard_team_may_use_anything(self):
        self.assertIsInstance(decide(CONFIG, "anything:7b", auth("sk-root")), Allow)

    def test_empty_team_may_use_nothing(self):
        self.assertEqual(decide(CONFIG, "llama3.2", auth("sk-none")).status, 403)

    def test_requests_without_a_model_need_only_a_token(self):
        self.assertIsInstance(decide(CONFIG, None, auth("sk-none")), Allow)
        self.assertEqual(decide(CONFIG, None, []).status, 401)

    def test_managing_a_server_needs_a_wildcard_team(self):
        # Pull, delete, blobs, endpoints llamagate does not know (`/api/signout`).
        for model in ["llama3.2", None]:
            v = decide(CONFIG, model, auth("sk-a"), manages=True)
            self.assertEqual(v.status, 403, model)
            self.assertIn("may not manage", v.message)
            self.assertIsInstance(decide(CONFIG, model, auth("sk-root"), manages=True), Allow)
        self.assertEqual(decide(CONFIG, "llama3.2", [], manages=True).status, 401)

    def test_listings_need_a_token_too(self):
        self.assertEqual(decide(CONFIG, None, auth("sk-a")), Allow(remove_headers=("authorization",)))
        self.assertEqual(decide(CONFIG, None, []).status, 401)


class Listings(unittest.TestCase):
    SOURCES = ["llama3.2:latest", "qwen2.5:14b", "mistral:latest", "library/LLAMA3.2"]

    def test_team_sees_its_models(self):
        self.assertEqual(visible(CONFIG, auth("sk-a"), self.SOURCES), [True, True, False, True])

    def test_admins_see_everything(self):
        self.assertEqual(visible(CONFIG, auth("sk-root"), self.SOURCES), [True] * 4)

    def test_no_or_unknown_token_sees_nothing(self):
        self.assertEqual(visible(CONFIG, [], self.SOURCES), [False] * 4)
        self.assertEqual(visible(CONFIG, auth("sk-x"), self.SOURCES), [False] * 4)


class Config(unittest.TestCase):
    def refused(self, config):
        text = config if isinstance(config, str) else json.dumps(config)
        with self.assertRaises(ConfigError) as cm:
            parse_config(text)
        return str(cm.exception)

    @unittest.skipIf(tomllib is None, "tomllib needs Python 3.11+")
    def test_the_example_config_is_accepted_and_holds_only_hashes(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamagate.toml")
        with open(path, "rb") as f:
            plugin = tomllib.load(f)["plugins"][0]
        config = parse_config(json.dumps(plugin["config"]))
        self.assertEqual(config.plaintext, 0)
        # The demo tokens its comments name.
        for token, team in [
            ("sk-team-a-0c7f1e", "team-a"),
            ("sk-team-b-5d21aa", "team-b"),
            ("sk-admin-93be42", "admins"),
        ]:
            self.assertEqual(config.team(token).name, team)

    def test_bad_configs_are_refused_naming_the_key(self):
        for config, expect in [
            ({}, "`teams` is missing"),
            ("not json", "not JSON"),
            ([], "must be a table"),
            ({"teams": {}}, "`tokens` is missing"),
            ({"teams": [], "tokens": {}}, "`teams` must be a table"),
            ({"teams": {"a": "llama3.2"}, "tokens": {}}, "`teams.a` must be a list"),
            ({"teams": {"a": ["llama3.2", 7]}, "tokens": {}}, "`teams.a` holds 7"),
            ({"teams": {"a": [""]}, "tokens": {}}, "`teams.a` holds \"\""),
            ({"teams": {"a": []}, "tokens": {"sk-a": "b"}}, 'names team "b", which is not in `teams` (a)'),
            ({"teams": {"a": []}, "tokens": {"sk-a": 1}}, "must name a team"),
            ({"teams": {"a": []}, "tokens": {"": "a"}}, "the key is empty"),
            ({"teams": {}, "tokens": {}, "token": {}}, "unknown config key `token`"),
        ]:
            self.assertIn(expect, self.refused(config), config)

    def test_errors_do_not_print_a_token_or_a_hash(self):
        message = self.refused({"teams": {}, "tokens": {"sk-very-secret-token": "x"}})
        self.assertNotIn("sk-v", message)
        self.assertIn('`tokens` entry 1 names team "x"', message)
        digest = sha256_hex("sk-very-secret-token")
        for key, expect in [
            ("sha256:" + digest[:63], "64 hex digits (the SHA-256 of the token, as `printf %s "),
            ("sha256:" + digest + "0", "this one has 65 characters"),
            ("sha256:" + digest[:63] + "g", "hex digits only"),
            ("sha256:" + digest[:63] + "\u00e9", "hex digits only"),
            ("sha256:sk-very-secret-token", "this one has 20 characters"),
            (" sk-very-secret-token", "whitespace"),
        ]:
            message = self.refused({"teams": {"a": ["*"]}, "tokens": {key: "a"}})
            self.assertIn('`tokens` entry 1 (team "a"): ', message)
            self.assertIn(expect, message, key)
            self.assertNotIn(digest[:16], message)
            self.assertNotIn("secret", message)

    def test_two_keys_for_one_token_are_refused(self):
        for keys in [
            ("sk-a", hashed("sk-a")),
            (hashed("sk-a"), "sha256:" + sha256_hex("sk-a").upper()),
        ]:
            message = self.refused(
                {"teams": {"a": ["*"], "b": ["*"]}, "tokens": {keys[0]: "a", keys[1]: "b"}}
            )
            self.assertIn('`tokens` entry 2 (team "b"): the key stands for the same token', message)


class Tokens(unittest.TestCase):
    def test_sha256_hex_is_what_sha256sum_prints(self):
        # printf %s abc | sha256sum
        self.assertEqual(
            sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )

    def test_plaintext_tokens_still_work_and_are_counted(self):
        config = parse_config(
            json.dumps({"teams": {"a": ["*"]}, "tokens": {"sk-plain": "a", hashed("sk-hashed"): "a"}})
        )
        self.assertEqual(config.plaintext, 1)
        self.assertIsInstance(decide(config, "m", auth("sk-plain")), Allow)
        self.assertIsInstance(decide(config, "m", auth("sk-hashed")), Allow)
        self.assertEqual(decide(config, "m", auth("sk-plaim")).status, 401)
        self.assertEqual(CONFIG.plaintext, 0)

    def test_every_entry_maps_to_its_own_team(self):
        names = [f"t{i}" for i in range(20)]
        config = parse_config(
            json.dumps({"teams": {n: ["*"] for n in names}, "tokens": {hashed(f"sk-{n}"): n for n in names}})
        )
        for n in names:
            self.assertEqual(config.team(f"sk-{n}").name, n)
        self.assertIsNone(config.team("sk-t20"))


if __name__ == "__main__":
    unittest.main(verbosity=1)
