-- The account management the mysql plugin needs, without global CREATE USER
-- or CONNECTION ADMIN in the plugin's own account (README.md, "What a plugin
-- holds"). Run it as an administrator (mysql -uroot < least-privilege.sql);
-- it is idempotent. Then give the plugin's account EXECUTE on the five
-- procedures below and nothing global (tests/services/roles.sh does both).
--
-- MariaDB cannot limit CREATE USER to a name pattern: an account holding it
-- may ALTER USER root. So that right sits with a definer account nobody can
-- log in as (ACCOUNT LOCK), and the plugin reaches it only through these SQL
-- SECURITY DEFINER procedures. Each does one thing to names of the plugin's
-- shape only (plugins/mysql/src/lib.rs, plugins/sdk/src/names.rs): binding
-- users `u_` + 16 hex digits at host '%', databases `db` + 16 hex digits. The
-- statement is built from the checked values, strings through QUOTE() and
-- identifiers in backticks, and run with EXECUTE IMMEDIATE (MariaDB takes no
-- `?` for an account name in CREATE USER).
--
-- MariaDB 10.5.2 or later (CONNECTION ADMIN, CREATE OR REPLACE PROCEDURE,
-- EXECUTE IMMEDIATE); run it with the `mysql` command line (DELIMITER). On
-- MySQL, give the plugin an account holding CREATE USER and CONNECTION_ADMIN
-- instead: without the procedures it runs the statements itself.

-- A procedure keeps the sql_mode it was created with. QUOTE() escapes with
-- backslashes, which NO_BACKSLASH_ESCAPES would turn into a way out of the
-- string: so the mode is fixed here, whatever the session had.
SET SESSION sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION';

CREATE USER IF NOT EXISTS 'wasm_broker_mysql_definer'@'localhost' ACCOUNT LOCK;
ALTER USER 'wasm_broker_mysql_definer'@'localhost' ACCOUNT LOCK;
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'wasm_broker_mysql_definer'@'localhost';
GRANT CREATE USER, CONNECTION ADMIN ON *.* TO 'wasm_broker_mysql_definer'@'localhost';
-- `_` matches any one character: exactly the 18-character names `db<hash>`.
GRANT ALL PRIVILEGES ON `db________________`.* TO 'wasm_broker_mysql_definer'@'localhost'
  WITH GRANT OPTION;
-- MariaDB checks that a procedure's definer may execute it.
GRANT EXECUTE ON `wasm_broker`.* TO 'wasm_broker_mysql_definer'@'localhost';

CREATE DATABASE IF NOT EXISTS wasm_broker;

DELIMITER //

-- CREATE USER IF NOT EXISTS with its password in the same statement (never a
-- passwordless user), at most `max_connections` sessions, and a password
-- lifetime of `expire_days` (NULL: never expires).
CREATE OR REPLACE
  DEFINER = 'wasm_broker_mysql_definer'@'localhost'
  PROCEDURE wasm_broker.create_user(
    p_user VARCHAR(255) CHARACTER SET utf8mb4,
    p_password VARCHAR(255) CHARACTER SET utf8mb4,
    p_max_connections INT UNSIGNED,
    p_expire_days INT UNSIGNED)
  MODIFIES SQL DATA SQL SECURITY DEFINER
  COMMENT 'wasm-broker mysql plugin: CREATE USER IF NOT EXISTS u_<16 hex>@%'
BEGIN
  IF p_user IS NULL OR CHAR_LENGTH(p_user) <> 18
     OR NOT p_user COLLATE utf8mb4_bin REGEXP '^u_[0-9a-f]{16}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding user (u_ and 16 hex digits)';
  END IF;
  -- The plugin's passwords are letters and digits (plugins/sdk/src/secret.rs).
  IF p_password IS NULL OR NOT p_password COLLATE utf8mb4_bin REGEXP '^[A-Za-z0-9]{16,128}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding password (16 to 128 letters and digits)';
  END IF;
  IF p_max_connections IS NULL OR p_max_connections NOT BETWEEN 1 AND 10000 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: max_connections is not between 1 and 10000';
  END IF;
  IF p_expire_days IS NOT NULL AND p_expire_days NOT BETWEEN 1 AND 3650 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: expire_days is not between 1 and 3650';
  END IF;
  EXECUTE IMMEDIATE CONCAT(
    'CREATE USER IF NOT EXISTS ', QUOTE(p_user), '@''%'' IDENTIFIED BY ', QUOTE(p_password),
    ' WITH MAX_USER_CONNECTIONS ', p_max_connections,
    IF(p_expire_days IS NULL, ' PASSWORD EXPIRE NEVER',
       CONCAT(' PASSWORD EXPIRE INTERVAL ', p_expire_days, ' DAY')));
END //

-- ALTER USER: the same settings on an existing binding user (a retried bind
-- gives it the password that attempt returns, which restarts its lifetime).
CREATE OR REPLACE
  DEFINER = 'wasm_broker_mysql_definer'@'localhost'
  PROCEDURE wasm_broker.alter_user(
    p_user VARCHAR(255) CHARACTER SET utf8mb4,
    p_password VARCHAR(255) CHARACTER SET utf8mb4,
    p_max_connections INT UNSIGNED,
    p_expire_days INT UNSIGNED)
  MODIFIES SQL DATA SQL SECURITY DEFINER
  COMMENT 'wasm-broker mysql plugin: ALTER USER u_<16 hex>@%'
BEGIN
  IF p_user IS NULL OR CHAR_LENGTH(p_user) <> 18
     OR NOT p_user COLLATE utf8mb4_bin REGEXP '^u_[0-9a-f]{16}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding user (u_ and 16 hex digits)';
  END IF;
  IF p_password IS NULL OR NOT p_password COLLATE utf8mb4_bin REGEXP '^[A-Za-z0-9]{16,128}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding password (16 to 128 letters and digits)';
  END IF;
  IF p_max_connections IS NULL OR p_max_connections NOT BETWEEN 1 AND 10000 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: max_connections is not between 1 and 10000';
  END IF;
  IF p_expire_days IS NOT NULL AND p_expire_days NOT BETWEEN 1 AND 3650 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: expire_days is not between 1 and 3650';
  END IF;
  EXECUTE IMMEDIATE CONCAT(
    'ALTER USER ', QUOTE(p_user), '@''%'' IDENTIFIED BY ', QUOTE(p_password),
    ' WITH MAX_USER_CONNECTIONS ', p_max_connections,
    IF(p_expire_days IS NULL, ' PASSWORD EXPIRE NEVER',
       CONCAT(' PASSWORD EXPIRE INTERVAL ', p_expire_days, ' DAY')));
END //

-- GRANT ALL on one instance database to one binding user.
CREATE OR REPLACE
  DEFINER = 'wasm_broker_mysql_definer'@'localhost'
  PROCEDURE wasm_broker.grant_database(
    p_database VARCHAR(255) CHARACTER SET utf8mb4,
    p_user VARCHAR(255) CHARACTER SET utf8mb4)
  MODIFIES SQL DATA SQL SECURITY DEFINER
  COMMENT 'wasm-broker mysql plugin: GRANT ALL ON db<16 hex>.* TO u_<16 hex>@%'
BEGIN
  IF p_database IS NULL OR CHAR_LENGTH(p_database) <> 18
     OR NOT p_database COLLATE utf8mb4_bin REGEXP '^db[0-9a-f]{16}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not an instance database (db and 16 hex digits)';
  END IF;
  IF p_user IS NULL OR CHAR_LENGTH(p_user) <> 18
     OR NOT p_user COLLATE utf8mb4_bin REGEXP '^u_[0-9a-f]{16}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding user (u_ and 16 hex digits)';
  END IF;
  EXECUTE IMMEDIATE CONCAT(
    'GRANT ALL PRIVILEGES ON `', REPLACE(p_database, '`', '``'), '`.* TO ', QUOTE(p_user), '@''%''');
END //

-- DROP USER IF EXISTS.
CREATE OR REPLACE
  DEFINER = 'wasm_broker_mysql_definer'@'localhost'
  PROCEDURE wasm_broker.drop_user(p_user VARCHAR(255) CHARACTER SET utf8mb4)
  MODIFIES SQL DATA SQL SECURITY DEFINER
  COMMENT 'wasm-broker mysql plugin: DROP USER IF EXISTS u_<16 hex>@%'
BEGIN
  IF p_user IS NULL OR CHAR_LENGTH(p_user) <> 18
     OR NOT p_user COLLATE utf8mb4_bin REGEXP '^u_[0-9a-f]{16}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding user (u_ and 16 hex digits)';
  END IF;
  EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS ', QUOTE(p_user), '@''%''');
END //

-- KILL CONNECTION USER: ends the sessions of a dropped binding user.
CREATE OR REPLACE
  DEFINER = 'wasm_broker_mysql_definer'@'localhost'
  PROCEDURE wasm_broker.kill_user(p_user VARCHAR(255) CHARACTER SET utf8mb4)
  MODIFIES SQL DATA SQL SECURITY DEFINER
  COMMENT 'wasm-broker mysql plugin: KILL CONNECTION USER u_<16 hex>@%'
BEGIN
  IF p_user IS NULL OR CHAR_LENGTH(p_user) <> 18
     OR NOT p_user COLLATE utf8mb4_bin REGEXP '^u_[0-9a-f]{16}$' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'wasm_broker: not a binding user (u_ and 16 hex digits)';
  END IF;
  EXECUTE IMMEDIATE CONCAT('KILL CONNECTION USER ', QUOTE(p_user), '@''%''');
END //

DELIMITER ;
