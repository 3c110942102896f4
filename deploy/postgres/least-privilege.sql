-- The postgres plugin's least-privilege admin account (README.md, "What a
-- plugin holds"). Run as a superuser, in the database the broker's
-- connection for the plugin names (`postgres` in the shipped broker.toml):
--
--   psql -U postgres -d postgres -v admin=wasm_broker_postgres -f least-privilege.sql
--
-- The account (`admin`, default wasm_broker_postgres) must exist; create it
-- first with your own password (CREATE ROLE ... LOGIN PASSWORD '...').
-- Idempotent: every run puts everything below back as it is written.
--
-- Why: the plugin creates and drops roles, which in PostgreSQL takes
-- CREATEROLE. Up to PostgreSQL 15, CREATEROLE may also grant any
-- non-superuser role, pg_execute_server_program included, so a plugin
-- holding it runs `GRANT pg_execute_server_program TO CURRENT_USER` and
-- then `COPY ... FROM PROGRAM` (commands on the server as the postgres
-- user). A statement filter cannot stop that (`DO $$ ... EXECUTE ... $$`
-- builds any statement), so the account has no CREATEROLE at all:
--
-- - the account: LOGIN CREATEDB and pg_signal_backend (to end an unbound
--   role's sessions and DROP DATABASE ... WITH (FORCE)), nothing else;
-- - the roles are made by the functions below, one per thing the plugin
--   does, SECURITY DEFINER, owned by wasm_broker_role_manager (NOLOGIN
--   CREATEROLE, which nobody can log in as or become). They take only the
--   plugin's role names (`db_` + 16 hex digits + `_owner` for a database's
--   owner, `u_` + 16 hex digits for a binding's login) and grant nothing but
--   an owner role, one that holds no attribute and is a member of nothing.
--   Their bodies are fixed: the account may call them, not change them.
-- - the account may EXECUTE them; PUBLIC may not.
--
-- The plugin calls them when schema wasm_broker exists
-- (plugins/postgres/src/roles.rs) and runs the statements itself otherwise
-- (a superuser, or CREATEROLE on PostgreSQL 16 and later, which limits it
-- to the roles it created).
--
-- PostgreSQL 16 and later let CREATEROLE administer only the roles it
-- created: roles the plugin made before this file ran are not the role
-- manager's. Grant each to it (`GRANT <role> TO wasm_broker_role_manager
-- WITH ADMIN OPTION, INHERIT FALSE, SET FALSE`) or leave those instances
-- to their old account. Up to PostgreSQL 15 CREATEROLE administers them all.

\set ON_ERROR_STOP on
\if :{?admin}
\else
\set admin wasm_broker_postgres
\endif

SET client_min_messages = error;
-- All or nothing: a failed run leaves the account as it was.
BEGIN;

DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wasm_broker_role_manager') THEN
    CREATE ROLE wasm_broker_role_manager;
  END IF;
END $$;
ALTER ROLE wasm_broker_role_manager NOLOGIN CREATEROLE NOCREATEDB NOSUPERUSER
  NOREPLICATION NOBYPASSRLS;

-- The account loses CREATEROLE (and anything else an earlier setup gave it).
ALTER ROLE :"admin" LOGIN CREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS;
REVOKE pg_execute_server_program, pg_read_server_files, pg_write_server_files,
  pg_read_all_data, pg_write_all_data, pg_monitor, pg_read_all_settings FROM :"admin";
GRANT pg_signal_backend TO :"admin";

CREATE SCHEMA IF NOT EXISTS wasm_broker AUTHORIZATION wasm_broker_role_manager;
ALTER SCHEMA wasm_broker OWNER TO wasm_broker_role_manager;
REVOKE ALL ON SCHEMA wasm_broker FROM PUBLIC;

-- Each function starts by checking its names; a name outside the plugin's
-- patterns is refused before any statement is built. format('%I'/'%L')
-- quotes what goes into the statement. `SET search_path` keeps the caller's
-- schemas (and temporary objects) out of the name lookups.

-- A database owner role: NOLOGIN, no attribute. True when it was created.
CREATE OR REPLACE FUNCTION wasm_broker.create_owner(owner text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF owner IS NULL OR owner !~ '^db_[0-9a-f]{16}_owner$' THEN
    RAISE EXCEPTION 'wasm_broker: % is not a database owner role of the plugin', owner
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = owner) THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE ROLE %I NOLOGIN', owner);
  RETURN true;
END
$fn$;

-- Makes the caller (the session's login account) a member of an owner role,
-- so it may create, alter and drop that role's database. Only a plain owner
-- role: no attribute, a member of no role, so the membership brings nothing
-- but the database. True when it was granted.
CREATE OR REPLACE FUNCTION wasm_broker.act_as_owner(owner text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF owner IS NULL OR owner !~ '^db_[0-9a-f]{16}_owner$' THEN
    RAISE EXCEPTION 'wasm_broker: % is not a database owner role of the plugin', owner
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_roles r
    WHERE r.rolname = owner
      AND NOT (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolcanlogin
               OR r.rolreplication OR r.rolbypassrls)
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid)
  ) THEN
    RAISE EXCEPTION 'wasm_broker: % is missing or not a plain owner role', owner
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF pg_catalog.pg_has_role(session_user, owner, 'MEMBER') THEN
    RETURN false;
  END IF;
  EXECUTE format('GRANT %I TO %I', owner, session_user);
  RETURN true;
END
$fn$;

-- A binding's login role: a password, an expiry if any, a member of its
-- database's (plain) owner role. Refused when the role exists (the plugin
-- drops a leftover first). Sessions start as the owner through the
-- database's `role` setting, which the account sets as the database's
-- owner: PostgreSQL refuses to set `role` (ALTER ROLE ... SET role) inside
-- a SECURITY DEFINER function.
CREATE OR REPLACE FUNCTION wasm_broker.create_login(
  login text, password text, valid_until timestamptz, owner text
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF login IS NULL OR login !~ '^u_[0-9a-f]{16}$' THEN
    RAISE EXCEPTION 'wasm_broker: % is not a login role of the plugin', login
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF owner IS NULL OR owner !~ '^db_[0-9a-f]{16}_owner$' THEN
    RAISE EXCEPTION 'wasm_broker: % is not a database owner role of the plugin', owner
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF password IS NULL THEN
    RAISE EXCEPTION 'wasm_broker: a login role needs a password';
  END IF;
  IF NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_roles r
    WHERE r.rolname = owner
      AND NOT (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolcanlogin
               OR r.rolreplication OR r.rolbypassrls)
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid)
  ) THEN
    RAISE EXCEPTION 'wasm_broker: % is missing or not a plain owner role', owner
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L%s IN ROLE %I', login, password,
    CASE WHEN valid_until IS NULL THEN '' ELSE format(' VALID UNTIL %L', valid_until) END,
    owner);
  RETURN true;
END
$fn$;

-- Unbind: the login role can no longer log in. True when it existed.
CREATE OR REPLACE FUNCTION wasm_broker.disable_login(login text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF login IS NULL OR login !~ '^u_[0-9a-f]{16}$' THEN
    RAISE EXCEPTION 'wasm_broker: % is not a login role of the plugin', login
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = login) THEN
    RETURN false;
  END IF;
  EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL', login);
  RETURN true;
END
$fn$;

-- Drops a login or owner role of the plugin (fails while it owns anything,
-- e.g. its database). True when it existed.
CREATE OR REPLACE FUNCTION wasm_broker.drop_role(name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF name IS NULL OR name !~ '^(u_[0-9a-f]{16}|db_[0-9a-f]{16}_owner)$' THEN
    RAISE EXCEPTION 'wasm_broker: % is not a role of the plugin', name
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = name) THEN
    RETURN false;
  END IF;
  EXECUTE format('DROP ROLE %I', name);
  RETURN true;
END
$fn$;

ALTER FUNCTION wasm_broker.create_owner(text) OWNER TO wasm_broker_role_manager;
ALTER FUNCTION wasm_broker.act_as_owner(text) OWNER TO wasm_broker_role_manager;
ALTER FUNCTION wasm_broker.create_login(text, text, timestamptz, text)
  OWNER TO wasm_broker_role_manager;
ALTER FUNCTION wasm_broker.disable_login(text) OWNER TO wasm_broker_role_manager;
ALTER FUNCTION wasm_broker.drop_role(text) OWNER TO wasm_broker_role_manager;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA wasm_broker FROM PUBLIC;
GRANT USAGE ON SCHEMA wasm_broker TO :"admin";
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA wasm_broker TO :"admin";

-- The role manager is nobody's role: no member may use its CREATEROLE.
DO $$
DECLARE
  member text;
BEGIN
  FOR member IN
    SELECT m.rolname FROM pg_auth_members a
    JOIN pg_roles m ON m.oid = a.member
    JOIN pg_roles r ON r.oid = a.roleid
    WHERE r.rolname = 'wasm_broker_role_manager'
  LOOP
    EXECUTE format('REVOKE wasm_broker_role_manager FROM %I', member);
  END LOOP;
END $$;

COMMIT;
