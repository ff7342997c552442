--
-- Sites and the local site.
--
\set SHOW_CONTEXT never
SELECT sor.local_site() IS NULL AS local_site_unset;
SELECT sor.add_site('paris');
SELECT sor.add_site('london');
SELECT sor.add_site('tokyo_2');

-- bad input changes nothing
SELECT sor.add_site(NULL);
SELECT sor.add_site('');
SELECT sor.add_site('Paris');
SELECT sor.add_site('new york');
SELECT sor.add_site('pa-ris');
SELECT sor.add_site(repeat('a', 64));
SELECT sor.add_site('paris');
SELECT name FROM sor.site ORDER BY 1;

-- nothing can be owned before the local site is known
SELECT sor.takeover_site('london');
\echo :LAST_ERROR_SQLSTATE

-- setting the local site
SELECT sor.set_local_site(NULL);
SELECT sor.set_local_site('');
SELECT sor.set_local_site('berlin');
SELECT sor.set_local_site('paris', NULL);
SELECT sor.local_site() IS NULL AS local_site_unset;
SELECT sor.set_local_site('paris');
SELECT sor.local_site();
SELECT sor.set_local_site('paris');
SELECT sor.set_local_site('london');
SELECT sor.local_site();
SELECT sor.set_local_site('london', force => true);
SELECT sor.local_site();
SELECT sor.set_local_site('paris', force => true);
SELECT sor.local_site();
SELECT count(*) AS identity_rows FROM sor.local_identity;

-- a site cannot be dropped while it is the local site
DELETE FROM sor.site WHERE name = 'paris';
